//! A seeded generator of valid events: the same seed gives the same events.

use lambdalake_events::{
    Amount, Country, Currency, EventId, EventTime, Ident, Mcc, Payment, SensorReading,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SITES: [&str; 4] = ["lyon", "paris", "lille", "nantes"];
const COUNTRIES: [&str; 6] = ["FR", "DE", "ES", "IT", "BE", "NL"];
const MCCS: [i64; 6] = [5411, 5812, 5999, 4111, 5732, 7011];

pub struct Workload {
    rng: SmallRng,
    run: String,
    devices: usize,
    cards: usize,
    seq: u64,
}

impl Workload {
    /// `run` prefixes every event id, so two runs never share one.
    pub fn new(seed: u64, run: &str, devices: usize, cards: usize) -> Self {
        Workload {
            rng: SmallRng::seed_from_u64(seed),
            run: run.to_owned(),
            devices: devices.max(1),
            cards: cards.max(1),
            seq: 0,
        }
    }

    fn next_id(&mut self, prefix: &str) -> EventId {
        self.seq += 1;
        EventId::parse(format!("{}-{prefix}-{}", self.run, self.seq))
            .expect("generated ids are valid")
    }

    pub fn reading(&mut self, ts: EventTime) -> SensorReading {
        let device = self.rng.random_range(0..self.devices);
        SensorReading {
            event_id: self.next_id("r"),
            device_id: Ident::parse("device_id", format!("dev-{device:05}")).expect("valid"),
            site: Ident::parse("site", SITES[device % SITES.len()]).expect("valid"),
            ts,
            temperature_c: (self.rng.random_range(150..350) as f64) / 10.0,
            vibration_mm_s: (self.rng.random_range(0..500) as f64) / 100.0,
        }
    }

    pub fn payment(&mut self, ts: EventTime) -> Payment {
        let card = self.rng.random_range(0..self.cards);
        let country = COUNTRIES[card % COUNTRIES.len()];
        let event_id = self.next_id("p");
        Payment {
            txn_id: Ident::parse("txn_id", format!("txn-{}", event_id.as_str())).expect("valid"),
            event_id,
            card_id: Ident::parse("card_id", format!("card-{card:06}")).expect("valid"),
            merchant_id: Ident::parse(
                "merchant_id",
                format!("m-{}", self.rng.random_range(0..500)),
            )
            .expect("valid"),
            mcc: Mcc::new("mcc", MCCS[self.rng.random_range(0..MCCS.len())]).expect("valid"),
            amount: Amount::from_cents("amount", self.rng.random_range(100..20_000))
                .expect("valid"),
            currency: Currency::parse("currency", "EUR").expect("valid"),
            country: Country::parse("country", country).expect("valid"),
            // a card is used around its home town (a fixed place per card, within ~5 km)
            lat: home(card, 43.0, 7.0) + self.rng.random_range(-50..50) as f64 / 1000.0,
            lon: home(card.wrapping_mul(7919), -1.0, 9.0)
                + self.rng.random_range(-50..50) as f64 / 1000.0,
            ts,
        }
    }
}

/// A coordinate in `[base, base + span)` fixed by `n` (0.01° steps).
fn home(n: usize, base: f64, span: f64) -> f64 {
    let steps = (span * 100.0) as usize;
    base + (n % steps) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use lambdalake_events::{Event, Policy};

    use super::*;

    #[test]
    fn same_seed_same_events_and_all_valid() {
        let ts = EventTime::now();
        let gen_all = || {
            let mut w = Workload::new(7, "t", 10, 10);
            (0..200)
                .map(|_| {
                    (
                        serde_json::to_string(&w.reading(ts)).unwrap(),
                        serde_json::to_string(&w.payment(ts)).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let a = gen_all();
        assert_eq!(a, gen_all());
        for (r, p) in &a {
            SensorReading::from_json(r.as_bytes(), &Policy::default()).unwrap();
            Payment::from_json(p.as_bytes(), &Policy::default()).unwrap();
        }
    }
}
