//! Per-event cost of the speed layer's view update: window assignment plus the aggregate update
//! of every window the event belongs to, into an in-memory map (no Redis).
//!
//! 10,000 events over 1,000 keys and 10 minutes of event time, in shuffled order; each
//! iteration applies all of them to an empty map, so the report's throughput is events/s.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambdalake_events::{
    Amount, Country, Currency, EventId, EventTime, Ident, Mcc, Payment, SensorReading,
};
use lambdalake_views::{CardAgg, Merge, SensorAgg, SessionAggs, Sessions, Window, WindowSpec};

const EVENTS: usize = 10_000;
const KEYS: u64 = 1_000;
const SPAN_MS: u64 = 10 * 60_000;
/// 2025-11-25T10:00:00Z.
const T0: i64 = 1_764_064_800_000;

/// SplitMix64: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ts(&mut self) -> EventTime {
        EventTime::from_millis("ts", T0 + self.below(SPAN_MS) as i64).unwrap()
    }
}

fn readings() -> Vec<SensorReading> {
    let mut rng = Rng(1);
    (0..EVENTS)
        .map(|i| SensorReading {
            event_id: EventId::parse(format!("r{i}")).unwrap(),
            device_id: Ident::parse("device_id", format!("device-{}", rng.below(KEYS))).unwrap(),
            site: Ident::parse("site", "plant-1").unwrap(),
            ts: rng.ts(),
            temperature_c: rng.below(100_000) as f64 / 1_000.0,
            vibration_mm_s: rng.below(50_000) as f64 / 1_000.0,
        })
        .collect()
}

fn payments() -> Vec<Payment> {
    let mut rng = Rng(2);
    let countries = ["FR", "DE", "ES", "IT"];
    (0..EVENTS)
        .map(|i| Payment {
            event_id: EventId::parse(format!("p{i}")).unwrap(),
            txn_id: Ident::parse("txn_id", format!("t{i}")).unwrap(),
            card_id: Ident::parse("card_id", format!("card-{}", rng.below(KEYS))).unwrap(),
            merchant_id: Ident::parse("merchant_id", format!("m{}", rng.below(50))).unwrap(),
            mcc: Mcc::new("mcc", 5411).unwrap(),
            amount: Amount::from_cents("amount", 1 + rng.below(100_000) as i64).unwrap(),
            currency: Currency::parse("currency", "EUR").unwrap(),
            country: Country::parse("country", countries[rng.below(4) as usize]).unwrap(),
            lat: 45.76,
            lon: 4.84,
            ts: rng.ts(),
        })
        .collect()
}

/// Assign `ts` to the windows of `spec` and fold `agg` into each (cloned for all windows but
/// the last, which takes it).
fn update<'a, A: Merge + Clone>(
    view: &mut HashMap<(&'a str, Window), A>,
    key: &'a str,
    spec: WindowSpec,
    ts: EventTime,
    agg: A,
) {
    let mut windows = spec.assign(ts).peekable();
    let mut agg = Some(agg);
    while let Some(w) = windows.next() {
        let this = match windows.peek() {
            Some(_) => agg.clone(),
            None => agg.take(),
        };
        let Some(this) = this else { return };
        match view.entry((key, w)) {
            Entry::Vacant(v) => {
                v.insert(this);
            }
            Entry::Occupied(mut o) => o.get_mut().merge(&this),
        }
    }
}

fn windows(c: &mut Criterion) {
    let readings = readings();
    let payments = payments();
    let mut group = c.benchmark_group("views");
    group.throughput(Throughput::Elements(EVENTS as u64));

    for (name, spec) in [
        ("sensor_1m_tumbling", WindowSpec::ONE_MINUTE),
        ("sensor_5m_1m_sliding", WindowSpec::FIVE_BY_ONE_MINUTE),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut view = HashMap::new();
                for r in &readings {
                    update(
                        &mut view,
                        r.device_id.as_str(),
                        spec,
                        r.ts,
                        SensorAgg::of(r),
                    );
                }
                black_box(view)
            })
        });
    }

    group.bench_function("card_1m_tumbling", |b| {
        b.iter(|| {
            let mut view = HashMap::new();
            for p in &payments {
                let spec = WindowSpec::ONE_MINUTE;
                update(&mut view, p.card_id.as_str(), spec, p.ts, CardAgg::of(p));
            }
            black_box(view)
        })
    });

    group.bench_function("card_sessions_30m", |b| {
        b.iter(|| {
            let mut view: HashMap<&str, SessionAggs<CardAgg>> = HashMap::new();
            for p in &payments {
                view.entry(p.card_id.as_str())
                    .or_insert_with(|| SessionAggs::new(Sessions::CARD_GAP_MS))
                    .add_event(p.ts, CardAgg::of(p));
            }
            black_box(view)
        })
    });

    group.finish();
}

criterion_group!(benches, windows);
criterion_main!(benches);
