//! The workload: a seeded, deterministic stream of IoT readings, card payments and fraud labels,
//! with the imperfections a real feed has (out-of-order, late, duplicate and malformed events)
//! and injected fraud scenarios whose labels arrive later, as chargebacks do.
//!
//! Given the same [`Spec`] and the same sequence of clock readings, [`Generator::next`] returns the
//! same events, byte for byte: the clock is an input, never read here.
//!
//! - **Devices** sit on sites; each has a base temperature and vibration, a daily cycle (warmer
//!   in the afternoon), noise, and faults: an *overheating* episode (temperature climbs above
//!   90 °C for a few dozen readings) or a *vibration drift* (a slow rise past 18 mm/s).
//! - **Cards** have a home (country and place), two favourite merchant categories and a typical
//!   amount; a legitimate payment is near home, in a favourite category, around the typical
//!   amount, and a card pays rarely (see `--cards`).
//! - **Fraud scenarios**, started at a rate of `fraud` per payment on a random card:
//!   *card testing* (6–9 small payments 0.5–2.5 s apart at a digital-goods merchant),
//!   *impossible travel* (a payment at home, then one 1,500+ km away 20 s to 2 minutes later),
//!   *amount spike* (one payment 20–50 × the card's typical amount at a jeweller),
//!   *new-country spree* (3–5 payments abroad at a casino, a minute apart). Every fraudulent
//!   payment's label (`fraud: true`) follows `label_delay` later; a sample of legitimate
//!   payments is labelled `fraud: false`.
//! - **Imperfections**, each a fraction of the events: *out-of-order* (event time up to
//!   `out_of_order_by` in the past, within the allowed lateness), *late* (`late_by` in the past,
//!   beyond any watermark), *duplicate* (an exact copy of a recent valid event, same `event_id`),
//!   *malformed* (truncated JSON, a missing field or a wrong type: ingest rejects them).

use std::collections::VecDeque;

use lambdalake_events::{
    Amount, Country, Currency, EventId, EventTime, FraudLabel, Ident, Mcc, Payment, SensorReading,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SITES: [&str; 8] = [
    "lyon", "paris", "lille", "nantes", "rennes", "nice", "metz", "brest",
];
/// Home countries and a point inside each (lat, lon).
const COUNTRIES: [(&str, f64, f64); 6] = [
    ("FR", 46.6, 2.4),
    ("DE", 51.1, 10.4),
    ("ES", 40.4, -3.7),
    ("IT", 42.8, 12.5),
    ("BE", 50.6, 4.6),
    ("NL", 52.2, 5.3),
];
/// Far countries of fraud scenarios (≥ 1,500 km from every home).
const FAR: [(&str, f64, f64); 4] = [
    ("US", 40.7, -74.0),
    ("BR", -23.5, -46.6),
    ("TH", 13.7, 100.5),
    ("NG", 6.5, 3.4),
];
/// Everyday categories: groceries, restaurants, misc. retail, transit, hotels, fuel.
const EVERYDAY_MCCS: [u16; 6] = [5411, 5812, 5999, 4111, 7011, 5541];
const DAY_MS: i64 = 86_400_000;

/// The imperfections of the feed, each a fraction of the events in `0 … 1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Fractions {
    pub out_of_order: f64,
    pub late: f64,
    pub duplicate: f64,
    pub malformed: f64,
}

impl Default for Fractions {
    fn default() -> Self {
        Fractions {
            out_of_order: 0.05,
            late: 0.01,
            duplicate: 0.01,
            malformed: 0.005,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spec {
    pub seed: u64,
    /// Prefix of every event id, so two runs never share one.
    pub run: String,
    pub devices: usize,
    pub cards: usize,
    /// Share of the (non-label) events that are payments.
    pub payments: f64,
    /// Fraud scenarios started per legitimate payment.
    pub fraud: f64,
    /// Share of legitimate payments that get a `fraud: false` label.
    pub legit_labels: f64,
    pub fractions: Fractions,
    /// How far in the past an out-of-order event is, at most (keep it inside the allowed
    /// lateness of the speed layer, 30 s by default).
    pub out_of_order_by_ms: i64,
    /// How far in the past a late event is: uniformly in this range.
    pub late_by_ms: (i64, i64),
    /// Delay of a label after its payment.
    pub label_delay_ms: i64,
}

impl Spec {
    /// The defaults of `lambdalake-loadgen run` (tests build on them).
    #[cfg(test)]
    pub fn new(seed: u64, run: &str) -> Self {
        Spec {
            seed,
            run: run.to_owned(),
            devices: 1_000,
            cards: 1_000_000,
            payments: 0.1,
            fraud: 0.002,
            legit_labels: 0.01,
            fractions: Fractions::default(),
            out_of_order_by_ms: 20_000,
            late_by_ms: (120_000, 300_000),
            label_delay_ms: 10_000,
        }
    }

    /// Every rule, every problem listed.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let f = &self.fractions;
        for (name, v) in [
            ("payments", self.payments),
            ("fraud", self.fraud),
            ("legit-labels", self.legit_labels),
            ("out-of-order", f.out_of_order),
            ("late", f.late),
            ("duplicates", f.duplicate),
            ("malformed", f.malformed),
        ] {
            if !(0.0..=1.0).contains(&v) {
                problems.push(format!("--{name} must be a fraction from 0 to 1 (got {v})"));
            }
        }
        if f.out_of_order + f.late + f.duplicate + f.malformed > 1.0 {
            problems.push(
                "--out-of-order + --late + --duplicates + --malformed must not exceed 1".to_owned(),
            );
        }
        if self.devices == 0 || self.cards == 0 {
            problems.push("--devices and --cards must be at least 1".to_owned());
        }
        if self.late_by_ms.0 <= 0 || self.late_by_ms.0 > self.late_by_ms.1 {
            problems.push("--late-by must be a positive range, min ≤ max".to_owned());
        }
        if self.out_of_order_by_ms < 0 {
            problems.push("--out-of-order-by must not be negative".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One event to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub kind: Kind,
    /// The Kafka key (device or card id); malformed events carry one too.
    pub key: String,
    pub json: Vec<u8>,
    /// `None`: malformed, ingest must reject it.
    pub valid: Option<Valid>,
    /// Why the event is special, for the counts.
    pub tag: Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sensor,
    Payment,
    Label,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    OnTime,
    OutOfOrder,
    Late,
    Duplicate,
    Malformed,
    Fraud,
    Label,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Valid {
    Reading(SensorReading),
    /// The payment and whether it is fraud.
    Payment(Payment, bool),
    Label(FraudLabel),
}

impl Valid {
    pub fn event_id(&self) -> &str {
        match self {
            Valid::Reading(r) => r.event_id.as_str(),
            Valid::Payment(p, _) => p.event_id.as_str(),
            Valid::Label(l) => l.event_id.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Overheating { left: u32 },
    Drift { step: f64, left: u32 },
}

#[derive(Debug, Clone)]
struct Device {
    base_c: f64,
    base_vib: f64,
    fault: Option<Fault>,
    /// Extra temperature / vibration of the current fault.
    extra_c: f64,
    extra_vib: f64,
}

/// A payment scheduled by a fraud scenario.
#[derive(Debug, Clone)]
struct Scheduled {
    due_ms: i64,
    card: usize,
    amount_cents: i64,
    mcc: u16,
    place: (&'static str, f64, f64),
    fraud: bool,
}

pub struct Generator {
    spec: Spec,
    rng: SmallRng,
    seq: u64,
    devices: Vec<Device>,
    scheduled: Vec<Scheduled>,
    labels: VecDeque<(i64, FraudLabel)>,
    recent: VecDeque<Outgoing>,
}

/// A card's fixed traits, derived from its number (no per-card state to hold).
struct Card {
    home: (&'static str, f64, f64),
    favourite: [u16; 2],
    typical_cents: i64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Generator {
    pub fn new(spec: Spec) -> Self {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        let devices = (0..spec.devices)
            .map(|_| Device {
                base_c: f64::from(rng.random_range(300..450_i32)) / 10.0,
                base_vib: f64::from(rng.random_range(50..300_i32)) / 100.0,
                fault: None,
                extra_c: 0.0,
                extra_vib: 0.0,
            })
            .collect();
        Generator {
            spec,
            rng,
            seq: 0,
            devices,
            scheduled: Vec::new(),
            labels: VecDeque::new(),
            recent: VecDeque::with_capacity(1024),
        }
    }

    pub fn device_id(n: usize) -> String {
        format!("dev-{n:05}")
    }

    pub fn card_id(n: usize) -> String {
        format!("card-{n:07}")
    }

    fn card(&self, n: usize) -> Card {
        let h = mix(self.spec.seed ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let c = COUNTRIES[(h % COUNTRIES.len() as u64) as usize];
        // a place within ~1° of the country's point
        let dlat = ((h >> 8) % 200) as f64 / 100.0 - 1.0;
        let dlon = ((h >> 16) % 200) as f64 / 100.0 - 1.0;
        let a = EVERYDAY_MCCS[((h >> 24) % EVERYDAY_MCCS.len() as u64) as usize];
        let b = EVERYDAY_MCCS[((h >> 32) % EVERYDAY_MCCS.len() as u64) as usize];
        Card {
            home: (c.0, c.1 + dlat, c.2 + dlon),
            favourite: [a, b],
            // 5 € … 120 €
            typical_cents: 500 + ((h >> 40) % 11_500) as i64,
        }
    }

    fn next_id(&mut self, kind: char) -> String {
        self.seq += 1;
        format!("{}-{kind}{}", self.spec.run, self.seq)
    }

    /// The next event at wall-clock time `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Outgoing {
        // labels and scheduled scenario payments first, when due
        if self.labels.front().is_some_and(|(due, _)| *due <= now_ms) {
            let (_, label) = self.labels.pop_front().expect("checked");
            return Outgoing {
                kind: Kind::Label,
                key: label.card_id.as_str().to_owned(),
                json: serde_json::to_vec(&label).expect("serialisable"),
                valid: Some(Valid::Label(label)),
                tag: Tag::Label,
            };
        }
        if let Some(i) = self.scheduled.iter().position(|s| s.due_ms <= now_ms) {
            let s = self.scheduled.swap_remove(i);
            let p = self.payment_at(s.card, s.due_ms, s.amount_cents, s.mcc, s.place);
            return self.emit_payment(p, s.fraud, Tag::Fraud, now_ms);
        }
        let f = self.spec.fractions;
        let roll: f64 = self.rng.random();
        if roll < f.malformed {
            return self.malformed(now_ms);
        }
        if roll < f.malformed + f.duplicate && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut copy = self.recent[i].clone();
            copy.tag = Tag::Duplicate;
            return copy;
        }
        let (ts, tag) = if roll < f.malformed + f.duplicate + f.late {
            let (lo, hi) = self.spec.late_by_ms;
            (now_ms - self.rng.random_range(lo..=hi), Tag::Late)
        } else if roll < f.malformed + f.duplicate + f.late + f.out_of_order {
            let by = self.rng.random_range(0..=self.spec.out_of_order_by_ms);
            (now_ms - by, Tag::OutOfOrder)
        } else {
            (now_ms, Tag::OnTime)
        };
        let out = if self.rng.random_bool(self.spec.payments) {
            let card = self.rng.random_range(0..self.spec.cards);
            let c = self.card(card);
            // around the typical amount (× 0.5 … 1.5), mostly a favourite category, near home
            let amount = c.typical_cents / 2 + self.rng.random_range(0..=c.typical_cents);
            let mcc = c.favourite[self.rng.random_range(0..2)];
            let p = self.payment_at(card, ts, amount, mcc, c.home);
            if self.rng.random_bool(self.spec.fraud) {
                self.start_scenario(now_ms);
            }
            self.emit_payment(p, false, tag, now_ms)
        } else {
            let r = self.reading(ts);
            Outgoing {
                kind: Kind::Sensor,
                key: r.device_id.as_str().to_owned(),
                json: serde_json::to_vec(&r).expect("serialisable"),
                valid: Some(Valid::Reading(r)),
                tag,
            }
        };
        if self.recent.len() == 1024 {
            self.recent.pop_front();
        }
        self.recent.push_back(out.clone());
        out
    }

    fn emit_payment(&mut self, p: Payment, fraud: bool, tag: Tag, now_ms: i64) -> Outgoing {
        if fraud || self.rng.random_bool(self.spec.legit_labels) {
            let due = now_ms + self.spec.label_delay_ms;
            let label = FraudLabel {
                event_id: EventId::parse(self.next_id('l')).expect("valid id"),
                txn_id: p.txn_id.clone(),
                card_id: p.card_id.clone(),
                fraud,
                ts: EventTime::from_millis_unchecked(due),
            };
            // labels are due in the order they are made (one delay for all)
            self.labels.push_back((due, label));
        }
        Outgoing {
            kind: Kind::Payment,
            key: p.card_id.as_str().to_owned(),
            json: serde_json::to_vec(&p).expect("serialisable"),
            valid: Some(Valid::Payment(p, fraud)),
            tag,
        }
    }

    fn reading(&mut self, ts: i64) -> SensorReading {
        let n = self.rng.random_range(0..self.devices.len());
        let rng = &mut self.rng;
        let d = &mut self.devices[n];
        // faults: start rarely, run their course
        match d.fault {
            None => {
                let r: f64 = rng.random();
                if r < 0.000_5 {
                    d.fault = Some(Fault::Overheating {
                        left: rng.random_range(20..60),
                    });
                } else if r < 0.001 {
                    d.fault = Some(Fault::Drift {
                        step: f64::from(rng.random_range(5..30_i32)) / 100.0,
                        left: rng.random_range(100..300),
                    });
                }
            }
            Some(Fault::Overheating { left }) => {
                d.extra_c = (d.extra_c + 4.0).min(70.0);
                d.fault = (left > 1).then_some(Fault::Overheating { left: left - 1 });
            }
            Some(Fault::Drift { step, left }) => {
                d.extra_vib += step;
                d.fault = (left > 1).then_some(Fault::Drift {
                    step,
                    left: left - 1,
                });
            }
        }
        if d.fault.is_none() {
            // back to normal
            d.extra_c = 0.0;
            d.extra_vib = 0.0;
        }
        // daily cycle: ±3 °C, warmest at 15:00 UTC
        let phase = (ts.rem_euclid(DAY_MS) as f64 / DAY_MS as f64 - 0.625) * std::f64::consts::TAU;
        let t = d.base_c + 3.0 * phase.cos() + d.extra_c + rng.random_range(-1.0..1.0);
        let v = d.base_vib + d.extra_vib + rng.random_range(0.0..0.5);
        let site = SITES[n % SITES.len()];
        let event_id = self.next_id('r');
        SensorReading {
            event_id: EventId::parse(event_id).expect("valid id"),
            device_id: Ident::parse("device_id", Self::device_id(n)).expect("valid"),
            site: Ident::parse("site", site).expect("valid"),
            ts: EventTime::from_millis_unchecked(ts),
            // one decimal, like a real probe
            temperature_c: (t * 10.0).round() / 10.0,
            vibration_mm_s: ((v * 100.0).round() / 100.0).max(0.0),
        }
    }

    fn payment_at(
        &mut self,
        card: usize,
        ts: i64,
        amount_cents: i64,
        mcc: u16,
        place: (&'static str, f64, f64),
    ) -> Payment {
        let event_id = self.next_id('p');
        let jitter = |rng: &mut SmallRng| f64::from(rng.random_range(-5..=5_i32)) / 1000.0;
        let lat = (place.1 + jitter(&mut self.rng)).clamp(-90.0, 90.0);
        let lon = (place.2 + jitter(&mut self.rng)).clamp(-180.0, 180.0);
        let merchant = self.rng.random_range(0..5_000);
        Payment {
            txn_id: Ident::parse("txn_id", format!("t-{event_id}")).expect("valid"),
            event_id: EventId::parse(event_id).expect("valid id"),
            card_id: Ident::parse("card_id", Self::card_id(card)).expect("valid"),
            merchant_id: Ident::parse("merchant_id", format!("m-{merchant}")).expect("valid"),
            mcc: Mcc::new("mcc", i64::from(mcc)).expect("valid"),
            amount: Amount::from_cents("amount", amount_cents.clamp(1, Amount::MAX_CENTS))
                .expect("valid"),
            currency: Currency::parse("currency", "EUR").expect("valid"),
            country: Country::parse("country", place.0).expect("valid"),
            lat,
            lon,
            ts: EventTime::from_millis_unchecked(ts),
        }
    }

    fn start_scenario(&mut self, now_ms: i64) {
        let card = self.rng.random_range(0..self.spec.cards);
        let c = self.card(card);
        let far = FAR[self.rng.random_range(0..FAR.len())];
        let mut at = now_ms;
        let push = |s: &mut Vec<Scheduled>, due_ms, amount_cents, mcc, place, fraud| {
            s.push(Scheduled {
                due_ms,
                card,
                amount_cents,
                mcc,
                place,
                fraud,
            })
        };
        match self.rng.random_range(0..4) {
            0 => {
                // card testing: small amounts, a second or two apart, digital goods
                for _ in 0..self.rng.random_range(6..=9) {
                    at += self.rng.random_range(500..2_500);
                    let amount = self.rng.random_range(100..300);
                    push(&mut self.scheduled, at, amount, 5816, c.home, true);
                }
            }
            1 => {
                // impossible travel: at home, then far away 20 s to 2 minutes later
                at += 1_000;
                push(
                    &mut self.scheduled,
                    at,
                    c.typical_cents,
                    c.favourite[0],
                    c.home,
                    false,
                );
                at += self.rng.random_range(20_000..120_000);
                push(
                    &mut self.scheduled,
                    at,
                    c.typical_cents * 3,
                    5732,
                    far,
                    true,
                );
            }
            2 => {
                // amount spike at a jeweller
                at += 1_000;
                let amount = c.typical_cents * self.rng.random_range(20..=50);
                push(&mut self.scheduled, at, amount, 5944, c.home, true);
            }
            _ => {
                // new-country spree at a casino
                for _ in 0..self.rng.random_range(3..=5) {
                    at += self.rng.random_range(20_000..60_000);
                    let amount = c.typical_cents * 2;
                    push(&mut self.scheduled, at, amount, 7995, far, true);
                }
            }
        }
    }

    fn malformed(&mut self, now_ms: i64) -> Outgoing {
        let id = self.next_id('x');
        let device = Self::device_id(self.rng.random_range(0..self.devices.len()));
        let json = match self.rng.random_range(0..3) {
            // truncated
            0 => format!(r#"{{"event_id":"{id}","device_id":"{device}","site":"ly"#),
            // a required field missing
            1 => format!(
                r#"{{"event_id":"{id}","device_id":"{device}","site":"lyon","temperature_c":20.5,"vibration_mm_s":1.0}}"#
            ),
            // a wrong type
            _ => format!(
                r#"{{"event_id":"{id}","device_id":"{device}","site":"lyon","ts":{now_ms},"temperature_c":"hot","vibration_mm_s":1.0}}"#
            ),
        };
        Outgoing {
            kind: Kind::Sensor,
            key: device,
            json: json.into_bytes(),
            valid: None,
            tag: Tag::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lambdalake_events::{Event as _, Policy, SensorReading};

    use super::*;

    fn events(spec: &Spec, n: usize) -> Vec<Outgoing> {
        let mut g = Generator::new(spec.clone());
        // a fixed clock: 1 ms per event from a fixed instant
        (0..n)
            .map(|i| g.next(1_764_000_000_000 + i as i64))
            .collect()
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let spec = Spec {
            cards: 1_000,
            ..Spec::new(42, "t")
        };
        let a = events(&spec, 20_000);
        assert_eq!(a, events(&spec, 20_000));
        let b = events(&Spec { seed: 43, ..spec }, 20_000);
        assert_ne!(a, b);
    }

    #[test]
    fn fractions_are_respected_and_every_valid_event_passes_validation() {
        let spec = Spec {
            cards: 100_000,
            fractions: Fractions {
                out_of_order: 0.1,
                late: 0.05,
                duplicate: 0.03,
                malformed: 0.02,
            },
            ..Spec::new(7, "t")
        };
        let n = 200_000;
        let all = events(&spec, n);
        let mut tags: HashMap<Tag, usize> = HashMap::new();
        let policy = Policy::default();
        for e in &all {
            *tags.entry(e.tag).or_default() += 1;
            match (&e.valid, e.kind) {
                (Some(Valid::Reading(r)), Kind::Sensor) => {
                    let back = SensorReading::from_json(&e.json, &policy).unwrap();
                    assert_eq!(&back, r);
                }
                (Some(Valid::Payment(p, _)), Kind::Payment) => {
                    assert_eq!(&Payment::from_json(&e.json, &policy).unwrap(), p);
                }
                (Some(Valid::Label(l)), Kind::Label) => {
                    assert_eq!(&FraudLabel::from_json(&e.json, &policy).unwrap(), l);
                }
                (None, _) => {
                    assert!(SensorReading::from_json(&e.json, &policy).is_err());
                }
                other => panic!("kind and payload disagree: {other:?}"),
            }
        }
        let share = |t: Tag| tags.get(&t).copied().unwrap_or(0) as f64 / n as f64;
        // scenario payments and labels take their share before the rolls: a few percent
        for (tag, want) in [
            (Tag::OutOfOrder, 0.1),
            (Tag::Late, 0.05),
            (Tag::Duplicate, 0.03),
            (Tag::Malformed, 0.02),
        ] {
            let got = share(tag);
            assert!(
                (got - want).abs() < want * 0.1,
                "{tag:?}: {got:.4} of the events, wanted {want}"
            );
        }
        // late events are beyond the watermark: 2 to 5 minutes in the past
        for (i, e) in all.iter().enumerate() {
            if e.tag == Tag::Late {
                let ts = match &e.valid {
                    Some(Valid::Reading(r)) => r.ts.millis(),
                    Some(Valid::Payment(p, _)) => p.ts.millis(),
                    _ => continue,
                };
                let by = 1_764_000_000_000 + i as i64 - ts;
                assert!((120_000..=300_000).contains(&by), "late by {by} ms");
            }
        }
    }

    #[test]
    fn every_fraud_payment_is_labelled_later_and_scenarios_happen() {
        let spec = Spec {
            cards: 10_000,
            payments: 0.5,
            fraud: 0.01,
            ..Spec::new(3, "t")
        };
        let all = events(&spec, 100_000);
        let fraud: Vec<&Payment> = all
            .iter()
            .filter_map(|e| match &e.valid {
                Some(Valid::Payment(p, true)) if e.tag == Tag::Fraud => Some(p),
                _ => None,
            })
            .collect();
        assert!(fraud.len() > 300, "{} fraudulent payments", fraud.len());
        let labels: HashMap<&str, &FraudLabel> = all
            .iter()
            .filter_map(|e| match &e.valid {
                Some(Valid::Label(l)) => Some((l.txn_id.as_str(), l)),
                _ => None,
            })
            .collect();
        let mut labelled = 0;
        for p in &fraud {
            if let Some(l) = labels.get(p.txn_id.as_str()) {
                assert!(l.fraud);
                assert!(l.ts.millis() >= p.ts.millis() + spec.label_delay_ms);
                labelled += 1;
            }
        }
        // the last ones' labels are not due yet within 100 s of clock
        assert!(labelled as f64 > fraud.len() as f64 * 0.8);
        assert!(labels.values().any(|l| !l.fraud), "legitimate labels too");
        // devices run into faults: some reading above 90 °C
        assert!(all.iter().any(|e| matches!(&e.valid,
            Some(Valid::Reading(r)) if r.temperature_c > 90.0)));
    }
}
