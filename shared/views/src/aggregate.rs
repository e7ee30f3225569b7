//! Per-window aggregates. Each is a commutative monoid: `add` in any order and `merge` of any
//! split give the same value, bit for bit — which is what lets the speed layer (incremental),
//! the batch layer (whole tables) and the lakehouse (MERGE) agree exactly.
//!
//! Floating-point sums depend on the order of additions, so sums are kept in fixed point:
//! micro-units in an `i128` (1 µ°C, 1 µmm/s). Means are exact to 10⁻⁶ of the unit.

use std::collections::BTreeSet;

use lambdalake_events::{Payment, SensorReading};
use serde::Serialize;

/// Fixed-point scale of sums: 10⁻⁶ of the unit.
pub const SCALE: f64 = 1_000_000.0;

fn fixed(v: f64) -> i128 {
    (v * SCALE).round() as i128
}

/// An aggregate that two partial results combine into (associative and commutative).
pub trait Merge {
    fn merge(&mut self, other: &Self);
}

impl Merge for SensorAgg {
    fn merge(&mut self, other: &Self) {
        SensorAgg::merge(self, other);
    }
}

impl Merge for CardAgg {
    fn merge(&mut self, other: &Self) {
        CardAgg::merge(self, other);
    }
}

/// Count, min, max and sum of one measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub min: f64,
    pub max: f64,
    /// Sum in micro-units.
    pub sum_micro: i128,
}

impl Stat {
    fn of(v: f64) -> Self {
        // `-0.0` and `0.0` are equal, so which of the two `f64::min` and `f64::max` return
        // depends on the order of the arguments (and on the optimisation level): one zero keeps
        // min and max independent of arrival order down to the bits
        let v = if v == 0.0 { 0.0 } else { v };
        Stat {
            min: v,
            max: v,
            sum_micro: fixed(v),
        }
    }

    fn merge(&mut self, other: &Stat) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum_micro += other.sum_micro;
    }

    pub fn mean(&self, count: u64) -> f64 {
        if count == 0 {
            0.0
        } else {
            self.sum_micro as f64 / SCALE / count as f64
        }
    }
}

/// Readings of one device in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorAgg {
    pub count: u64,
    pub temperature_c: Stat,
    pub vibration_mm_s: Stat,
}

impl SensorAgg {
    pub fn of(r: &SensorReading) -> Self {
        SensorAgg {
            count: 1,
            temperature_c: Stat::of(r.temperature_c),
            vibration_mm_s: Stat::of(r.vibration_mm_s),
        }
    }

    pub fn add(&mut self, r: &SensorReading) {
        self.merge(&SensorAgg::of(r));
    }

    pub fn merge(&mut self, other: &SensorAgg) {
        self.count += other.count;
        self.temperature_c.merge(&other.temperature_c);
        self.vibration_mm_s.merge(&other.vibration_mm_s);
    }
}

/// Payments of one card in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardAgg {
    pub count: u64,
    /// Exact, in hundredths.
    pub amount_sum_cents: i64,
    pub amount_max_cents: i64,
    /// Distinct merchants (their ids).
    pub merchants: BTreeSet<String>,
    /// Distinct countries (ISO 3166-1 alpha-2).
    pub countries: BTreeSet<String>,
}

impl CardAgg {
    pub fn of(p: &Payment) -> Self {
        CardAgg {
            count: 1,
            amount_sum_cents: p.amount.cents(),
            amount_max_cents: p.amount.cents(),
            merchants: BTreeSet::from([p.merchant_id.as_str().to_owned()]),
            countries: BTreeSet::from([p.country.as_str().to_owned()]),
        }
    }

    /// Same as merging [`CardAgg::of`], without building it (the hot path of every layer).
    pub fn add(&mut self, p: &Payment) {
        self.count += 1;
        self.amount_sum_cents += p.amount.cents();
        self.amount_max_cents = self.amount_max_cents.max(p.amount.cents());
        if !self.merchants.contains(p.merchant_id.as_str()) {
            self.merchants.insert(p.merchant_id.as_str().to_owned());
        }
        if !self.countries.contains(p.country.as_str()) {
            self.countries.insert(p.country.as_str().to_owned());
        }
    }

    pub fn merge(&mut self, other: &CardAgg) {
        self.count += other.count;
        self.amount_sum_cents += other.amount_sum_cents;
        self.amount_max_cents = self.amount_max_cents.max(other.amount_max_cents);
        self.merchants.extend(other.merchants.iter().cloned());
        self.countries.extend(other.countries.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use lambdalake_events::{Event, Policy};
    use proptest::prelude::*;

    use super::*;

    fn reading(temp: f64, vib: f64) -> SensorReading {
        let json = format!(
            r#"{{"event_id":"e","device_id":"d","site":"s","ts":1764064800000,"temperature_c":{temp},"vibration_mm_s":{vib}}}"#
        );
        SensorReading::from_json(json.as_bytes(), &Policy::stored()).unwrap()
    }

    fn payment(cents: i64, merchant: u8, country: &str) -> Payment {
        let json = format!(
            r#"{{"event_id":"e","txn_id":"t","card_id":"c","merchant_id":"m{merchant}","mcc":"5411","amount":{},"currency":"EUR","country":"{country}","lat":0,"lon":0,"ts":1764064800000}}"#,
            cents as f64 / 100.0
        );
        Payment::from_json(json.as_bytes(), &Policy::stored()).unwrap()
    }

    proptest! {
        #[test]
        fn sensor_agg_is_order_independent(values in prop::collection::vec((-80.0f64..200.0, 0.0f64..1000.0), 1..50), split in 0usize..50) {
            let readings: Vec<_> = values.iter().map(|&(t, v)| reading(t, v)).collect();
            let fold = |rs: &[SensorReading]| {
                let mut agg = SensorAgg::of(&rs[0]);
                for r in &rs[1..] { agg.add(r); }
                agg
            };
            let forward = fold(&readings);
            let mut reversed: Vec<_> = readings.clone();
            reversed.reverse();
            prop_assert_eq!(&forward, &fold(&reversed));
            // merge of two halves equals the whole
            let split = split % readings.len();
            if split > 0 {
                let mut left = fold(&readings[..split]);
                left.merge(&fold(&readings[split..]));
                prop_assert_eq!(&forward, &left);
            }
            prop_assert_eq!(forward.count as usize, readings.len());
        }

        #[test]
        fn card_agg_is_order_independent(values in prop::collection::vec((1i64..100_000_000, 0u8..5, 0usize..3), 1..50)) {
            let countries = ["FR", "DE", "ES"];
            let payments: Vec<_> = values.iter().map(|&(c, m, k)| payment(c, m, countries[k])).collect();
            let fold = |ps: &[Payment]| {
                let mut agg = CardAgg::of(&ps[0]);
                for p in &ps[1..] { agg.add(p); }
                agg
            };
            let mut reversed = payments.clone();
            reversed.reverse();
            let forward = fold(&payments);
            prop_assert_eq!(&forward, &fold(&reversed));
            prop_assert_eq!(forward.amount_sum_cents, values.iter().map(|v| v.0).sum::<i64>());
            prop_assert_eq!(forward.amount_max_cents, values.iter().map(|v| v.0).max().unwrap());
        }
    }

    #[test]
    fn min_and_max_of_both_zeros_do_not_depend_on_order() {
        let fold = |a: f64, b: f64| {
            let mut agg = SensorAgg::of(&reading(a, 0.0));
            agg.add(&reading(b, 0.0));
            agg.temperature_c
        };
        let (forward, backward) = (fold(0.0, -0.0), fold(-0.0, 0.0));
        assert_eq!(forward.min.to_bits(), backward.min.to_bits());
        assert_eq!(forward.max.to_bits(), backward.max.to_bits());
        assert_eq!(forward.min.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn mean_is_exact_to_a_micro_unit() {
        let mut agg = SensorAgg::of(&reading(0.1, 0.0));
        agg.add(&reading(0.2, 0.0));
        assert_eq!(agg.temperature_c.mean(agg.count), 0.15);
    }
}
