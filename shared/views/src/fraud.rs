//! Fraud features and the fraud score of a payment, and the IoT alert rules.
//!
//! One pure function computes a payment's [`Features`] from the payment, the card's earlier
//! payments ([`Seen`], in any order) and the card's [`CardProfile`] (trained by the batch layer).
//! The speed layer calls it with the payments it has seen so far; the batch layer and the
//! lakehouse with the whole history — same function, same answer for the same inputs.
//!
//! [`score`] is the logistic model published by the batch layer when one exists, and documented
//! rules ([`rules_score`]) until then.

use lambdalake_events::{Payment, SensorReading};
use serde::{Deserialize, Serialize};

/// How far back "recent transactions" reach: 10 minutes of event time.
pub const RECENT_MS: i64 = 10 * 60_000;

/// Faster than an airliner between two payments: impossible travel.
pub const IMPOSSIBLE_KMH: f64 = 900.0;

/// What a payment remembers of the card's earlier payments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
}

impl From<&Payment> for Seen {
    fn from(p: &Payment) -> Self {
        Seen {
            ts_ms: p.ts.millis(),
            lat: p.lat,
            lon: p.lon,
        }
    }
}

/// A card's habits, computed by the batch layer from its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardProfile {
    pub amount_mean_cents: f64,
    pub amount_std_cents: f64,
    pub home_country: String,
    /// Countries the card was used in.
    pub countries: Vec<String>,
}

/// The name of batch version `version`'s model, as scores carry it in `model_version`.
pub fn model_name(version: i64) -> String {
    format!("batch-v{version}")
}

/// The inputs of the fraud score, in the order of [`Model::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// (amount − card mean) / card std; 0 without a profile or with a zero std.
    pub amount_z: f64,
    /// Payments of the card in the 10 minutes of event time up to this one, this one included.
    pub recent_count: u32,
    /// Speed implied by the distance and time from the card's previous payment, km/h (0 when
    /// there is none).
    pub travel_kmh: f64,
    /// The country is neither the card's home nor one it was used in (false without profile).
    pub new_country: bool,
    /// Risk of the merchant category, 0 … 1 ([`mcc_risk`]).
    pub mcc_risk: f64,
}

impl Features {
    pub const NAMES: [&'static str; 5] = [
        "amount_z",
        "recent_count",
        "travel_kmh",
        "new_country",
        "mcc_risk",
    ];

    /// The model's input vector. Travel is in thousands of km/h so that every input has a
    /// comparable scale.
    pub fn vector(&self) -> [f64; 5] {
        [
            self.amount_z,
            f64::from(self.recent_count),
            self.travel_kmh / 1000.0,
            if self.new_country { 1.0 } else { 0.0 },
            self.mcc_risk,
        ]
    }
}

/// Great-circle distance in km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

/// Risk of a merchant category code: quasi-cash and money transfer, gambling, and the categories
/// card testers favour score high; everything else low.
pub fn mcc_risk(mcc: u16) -> f64 {
    match mcc {
        4829 | 6051 | 6540 => 0.9, // wire transfer, quasi-cash, stored value
        7995 | 7800 | 7801 | 7802 => 0.8, // gambling
        5967 | 5966 | 5816 => 0.7, // direct marketing, digital games
        6011 | 6012 => 0.5,        // cash
        5732 | 5944 | 5094 => 0.4, // electronics, jewellery
        _ => 0.1,
    }
}

/// The features of `p`, given the card's other payments (any order; those after `p` in event
/// time are ignored) and its profile.
pub fn features(p: &Payment, history: &[Seen], profile: Option<&CardProfile>) -> Features {
    features_of(
        &PaymentFacts {
            ts_ms: p.ts.millis(),
            lat: p.lat,
            lon: p.lon,
            amount_cents: p.amount.cents(),
            country: p.country.as_str(),
            mcc: p.mcc.code(),
        },
        history,
        profile,
    )
}

/// What [`features`] reads of a payment, for callers that hold columns rather than decoded
/// [`Payment`]s (the batch layer's Polars frames).
#[derive(Debug, Clone, Copy)]
pub struct PaymentFacts<'a> {
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub amount_cents: i64,
    pub country: &'a str,
    pub mcc: u16,
}

/// [`features`] over the facts of a payment.
pub fn features_of(
    p: &PaymentFacts<'_>,
    history: &[Seen],
    profile: Option<&CardProfile>,
) -> Features {
    let ts = p.ts_ms;
    let earlier = history.iter().filter(|s| s.ts_ms <= ts);
    let recent_count = 1 + earlier.clone().filter(|s| s.ts_ms > ts - RECENT_MS).count() as u32;
    let previous = earlier.max_by_key(|s| s.ts_ms);
    let travel_kmh = previous.map_or(0.0, |prev| {
        let km = haversine_km(prev.lat, prev.lon, p.lat, p.lon);
        // at least one minute apart: payments in the same minute are not a journey
        let hours = ((ts - prev.ts_ms).max(60_000)) as f64 / 3_600_000.0;
        km / hours
    });
    let amount = p.amount_cents as f64;
    let (amount_z, new_country) = match profile {
        Some(pr) => {
            let z = if pr.amount_std_cents > 0.0 {
                (amount - pr.amount_mean_cents) / pr.amount_std_cents
            } else {
                0.0
            };
            (
                z,
                p.country != pr.home_country && !pr.countries.iter().any(|c| c == p.country),
            )
        }
        None => (0.0, false),
    };
    Features {
        amount_z,
        recent_count,
        travel_kmh,
        new_country,
        mcc_risk: mcc_risk(p.mcc),
    }
}

/// A logistic model over [`Features::vector`], trained and published by the batch layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub version: String,
    pub bias: f64,
    pub weights: [f64; 5],
}

/// A fraud score in 0 … 1 and what produced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub value: f64,
    /// The model version, or `"rules"`.
    pub by: String,
}

/// The rules that fired, named (also when a model scored the payment: they explain it).
pub fn reasons(f: &Features) -> Vec<String> {
    [
        (f.travel_kmh > IMPOSSIBLE_KMH, "impossible_travel"),
        (f.recent_count >= 5, "card_testing"),
        (f.amount_z > 4.0, "amount_spike"),
        (f.new_country, "new_country"),
        (f.mcc_risk >= 0.8, "high_risk_merchant"),
    ]
    .iter()
    .filter(|(hit, _)| *hit)
    .map(|(_, name)| (*name).to_owned())
    .collect()
}

/// The model's probability when there is a model, the rules otherwise.
pub fn score(f: &Features, model: Option<&Model>) -> Score {
    match model {
        Some(m) => {
            let z = m.bias
                + m.weights
                    .iter()
                    .zip(f.vector())
                    .map(|(w, x)| w * x)
                    .sum::<f64>();
            Score {
                value: 1.0 / (1.0 + (-z).exp()),
                by: m.version.clone(),
            }
        }
        None => Score {
            value: rules_score(f),
            by: "rules".to_owned(),
        },
    }
}

/// The rules used until a model exists. Each rule that fires is a probability of fraud; they
/// combine as independent evidence, 1 − Π(1 − pᵢ):
/// impossible travel 0.95; 5+ payments in 10 minutes (card testing) 0.85; amount more than 4
/// standard deviations above the card's mean 0.8; a new country 0.5; a high-risk category
/// (≥ 0.8) 0.4.
pub fn rules_score(f: &Features) -> f64 {
    let fired = [
        (f.travel_kmh > IMPOSSIBLE_KMH, 0.95),
        (f.recent_count >= 5, 0.85),
        (f.amount_z > 4.0, 0.8),
        (f.new_country, 0.5),
        (f.mcc_risk >= 0.8, 0.4),
    ];
    1.0 - fired
        .iter()
        .filter(|(hit, _)| *hit)
        .map(|(_, p)| 1.0 - p)
        .product::<f64>()
}

/// A device's normal behaviour, computed by the batch layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceBaseline {
    pub temperature_mean: f64,
    pub temperature_std: f64,
    pub vibration_mean: f64,
    pub vibration_std: f64,
}

/// Why a reading raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorAlert {
    /// Above 90 °C.
    Overheating,
    /// Above 18 mm/s (ISO 10816 "unacceptable" for medium machines).
    Vibration,
    /// More than 4 standard deviations from the device's baseline temperature.
    TemperatureAnomaly,
    /// More than 4 standard deviations above the device's baseline vibration.
    VibrationAnomaly,
}

pub const OVERHEATING_C: f64 = 90.0;
pub const VIBRATION_LIMIT_MM_S: f64 = 18.0;
pub const ANOMALY_Z: f64 = 4.0;

/// The alerts a reading raises (none for a normal reading).
pub fn sensor_alerts(r: &SensorReading, baseline: Option<&DeviceBaseline>) -> Vec<SensorAlert> {
    let mut alerts = Vec::new();
    if r.temperature_c > OVERHEATING_C {
        alerts.push(SensorAlert::Overheating);
    }
    if r.vibration_mm_s > VIBRATION_LIMIT_MM_S {
        alerts.push(SensorAlert::Vibration);
    }
    if let Some(b) = baseline {
        if b.temperature_std > 0.0
            && ((r.temperature_c - b.temperature_mean) / b.temperature_std).abs() > ANOMALY_Z
        {
            alerts.push(SensorAlert::TemperatureAnomaly);
        }
        if b.vibration_std > 0.0
            && (r.vibration_mm_s - b.vibration_mean) / b.vibration_std > ANOMALY_Z
        {
            alerts.push(SensorAlert::VibrationAnomaly);
        }
    }
    alerts
}

#[cfg(test)]
mod tests;
