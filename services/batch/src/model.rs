//! The fraud model: a logistic regression (`linfa-logistic`) over the features of
//! `lambdalake_views::fraud` — the same function the speed layer scores with — trained on the
//! labelled payment history, and its quality on a held-out split.
//!
//! - **Labels.** A payment is a fraud when the latest verdict on its `txn_id` on the
//!   `fraud-labels` topic says so; every other payment counts as legitimate (labels arrive as
//!   chargebacks do: only the frauds are reported, some of them late).
//! - **Features.** For each payment: its card's earlier payments in event time (ties: archive
//!   order) and the card's profile of this run, through `lambdalake_views::fraud::features_of`.
//! - **Split.** A payment is held out when a hash of its `txn_id` says so (1 in 5): the split does
//!   not change from one run to the next, so a payment never moves from test to training.
//! - **Sampling.** Every fraud is kept; legitimate payments are sampled (by another hash of the
//!   `txn_id`) so that at most `max_rows` payments are used. The intercept is corrected by
//!   `ln(rate)` so the probabilities are those of the whole population, and precision counts each
//!   sampled legitimate payment `1 / rate` times.
//! - **Quality** on the held-out payments: precision and recall at probability 0.5, and the area
//!   under the ROC curve (ties count one half).
//! - No model is trained (the speed layer keeps its rules) while the training part holds fewer
//!   than `min_frauds` frauds or no legitimate payment.

use std::collections::HashMap;

use lambdalake_views::fraud::{CardProfile, Features, Model, PaymentFacts, RECENT_MS, Seen};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use polars::prelude::*;

use crate::publish::TrainedModel;

/// How the model is trained.
#[derive(Debug, Clone, Copy)]
pub struct ModelSettings {
    /// Fewest frauds in the training part for a model to be trained.
    pub min_frauds: usize,
    /// Most payments used (training and held out together); legitimate ones are sampled.
    pub max_rows: usize,
}

/// A trained model, or why there is none.
#[derive(Debug, Clone)]
pub enum Training {
    Trained(TrainedModel),
    Skipped(String),
}

/// One held out in this many payments.
const HOLD_OUT_ONE_IN: u64 = 5;

/// FNV-1a of `s` after `salt`, then MurmurHash3's finalizer (FNV alone mixes short strings
/// poorly): stable across runs, machines and versions.
fn fnv(salt: u8, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(salt).chain(s.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn held_out(txn: &str) -> bool {
    fnv(1, txn).is_multiple_of(HOLD_OUT_ONE_IN)
}

/// A number in [0, 1) from the `txn_id`, for sampling.
fn unit(txn: &str) -> f64 {
    (fnv(2, txn) >> 11) as f64 / (1u64 << 53) as f64
}

/// The profiles of `card_profiles` (the recompute's frame), by card.
pub fn card_profiles(df: &DataFrame) -> PolarsResult<HashMap<String, CardProfile>> {
    if df.height() == 0 {
        return Ok(HashMap::new());
    }
    let cards = df.column("card_id")?.str()?;
    let mean = df.column("amount_mean_cents")?.f64()?;
    let std = df.column("amount_std_cents")?.f64()?;
    let home = df.column("home_country")?.str()?;
    let countries = df.column("countries")?.list()?;
    let mut out = HashMap::with_capacity(df.height());
    for (i, (((card, mean), std), home)) in cards
        .iter()
        .zip(mean.iter())
        .zip(std.iter())
        .zip(home.iter())
        .enumerate()
    {
        let Some(card) = card else { continue };
        let countries = match countries.get_as_series(i) {
            Some(s) => s.str()?.iter().flatten().map(str::to_owned).collect(),
            None => Vec::new(),
        };
        out.insert(
            card.to_owned(),
            CardProfile {
                amount_mean_cents: mean.unwrap_or(0.0),
                amount_std_cents: std.unwrap_or(0.0),
                home_country: home.unwrap_or_default().to_owned(),
                countries,
            },
        );
    }
    Ok(out)
}

/// One payment chosen for training or testing.
struct Row {
    f: Features,
    fraud: bool,
    test: bool,
}

/// Train the model on `payments` (deduplicated, sorted by card then event time, as the
/// recompute leaves them) and `labels` (`txn_id, fraud`, one verdict per transaction).
pub fn train(
    payments: &DataFrame,
    labels: &DataFrame,
    profiles: &HashMap<String, CardProfile>,
    settings: ModelSettings,
) -> PolarsResult<Training> {
    if payments.height() == 0 {
        return Ok(Training::Skipped("no payment archived".to_owned()));
    }
    let mut verdicts: HashMap<&str, bool> = HashMap::new();
    if labels.height() > 0 {
        for (txn, fraud) in labels
            .column("txn_id")?
            .str()?
            .iter()
            .zip(labels.column("fraud")?.bool()?.iter())
        {
            if let (Some(t), Some(f)) = (txn, fraud) {
                verdicts.insert(t, f);
            }
        }
    }
    let txns: Vec<&str> = payments
        .column("txn_id")?
        .str()?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let frauds: Vec<bool> = txns
        .iter()
        .map(|t| verdicts.get(t).copied().unwrap_or(false))
        .collect();
    let positives = frauds.iter().filter(|f| **f).count();
    let negatives = frauds.len() - positives;
    let room = settings.max_rows.saturating_sub(positives);
    let rate = if negatives <= room {
        1.0
    } else {
        room as f64 / negatives as f64
    };
    let rows: Vec<Row> = features(payments, profiles, |i| {
        frauds[i] || rate >= 1.0 || unit(txns[i]) < rate
    })?
    .into_iter()
    .map(|(i, f)| Row {
        f,
        fraud: frauds[i],
        test: held_out(txns[i]),
    })
    .collect();
    fit(&rows, rate, settings.min_frauds)
}

/// The features of the payments of `payments` (deduplicated, sorted by card then event time)
/// that `wanted` selects by row index: each payment's history is the card's earlier rows.
pub fn features(
    payments: &DataFrame,
    profiles: &HashMap<String, CardProfile>,
    mut wanted: impl FnMut(usize) -> bool,
) -> PolarsResult<Vec<(usize, Features)>> {
    if payments.height() == 0 {
        return Ok(Vec::new());
    }
    let cards: Vec<&str> = payments
        .column("card_id")?
        .str()?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let lat = payments.column("lat")?.f64()?;
    let lon = payments.column("lon")?.f64()?;
    let seen: Vec<Seen> = payments
        .column("ts")?
        .i64()?
        .iter()
        .zip(lat.iter().zip(lon.iter()))
        .map(|(ts, (la, lo))| Seen {
            ts_ms: ts.unwrap_or(0),
            lat: la.unwrap_or(0.0),
            lon: lo.unwrap_or(0.0),
        })
        .collect();
    let countries: Vec<&str> = payments
        .column("country")?
        .str()?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let amounts: Vec<i64> = payments
        .column("amount_cents")?
        .i64()?
        .iter()
        .map(|a| a.unwrap_or(0))
        .collect();
    let mcc = payments.column("mcc")?.cast(&DataType::Int32)?;
    let mccs: Vec<u16> = mcc
        .i32()?
        .iter()
        .map(|m| u16::try_from(m.unwrap_or(0)).unwrap_or(0))
        .collect();

    let mut out = Vec::new();
    let mut card_start = 0;
    let mut recent_start = 0;
    for i in 0..cards.len() {
        if i == 0 || cards[i] != cards[i - 1] {
            card_start = i;
            recent_start = i;
        }
        let ts = seen[i].ts_ms;
        while recent_start < i && seen[recent_start].ts_ms <= ts - RECENT_MS {
            recent_start += 1;
        }
        if !wanted(i) {
            continue;
        }
        // the payments of the last 10 minutes, and the one before them (the previous payment
        // is the journey's start): everything `features_of` reads of the history
        let from = recent_start.min(i.saturating_sub(1)).max(card_start);
        let f = lambdalake_views::fraud::features_of(
            &PaymentFacts {
                ts_ms: ts,
                lat: seen[i].lat,
                lon: seen[i].lon,
                amount_cents: amounts[i],
                country: countries[i],
                mcc: mccs[i],
            },
            &seen[from..i],
            profiles.get(cards[i]),
        );
        out.push((i, f));
    }
    Ok(out)
}

fn fit(rows: &[Row], rate: f64, min_frauds: usize) -> PolarsResult<Training> {
    let (train, test): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| !r.test);
    let frauds = train.iter().filter(|r| r.fraud).count();
    if frauds < min_frauds {
        return Ok(Training::Skipped(format!(
            "{frauds} labelled frauds to train on, fewer than {min_frauds}"
        )));
    }
    if frauds == train.len() {
        return Ok(Training::Skipped(
            "no legitimate payment to train on".to_owned(),
        ));
    }
    let x = Array2::from_shape_vec(
        (train.len(), 5),
        train
            .iter()
            .flat_map(|r| r.f.vector())
            .collect::<Vec<f64>>(),
    )
    .map_err(|e| polars_err!(ComputeError: "training matrix: {e}"))?;
    let y: Array1<bool> = train.iter().map(|r| r.fraud).collect();
    let fitted = match LogisticRegression::default()
        .max_iterations(200)
        .fit(&Dataset::new(x, y))
    {
        Ok(f) => f,
        Err(e) => return Ok(Training::Skipped(format!("training failed: {e}"))),
    };
    // linfa's positive class is the more frequent one: turn it into "fraud"
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let mut weights = [0.0; 5];
    for (w, p) in weights.iter_mut().zip(fitted.params().iter()) {
        *w = sign * p;
    }
    let model = Model {
        // named at publication, after the batch version
        version: String::new(),
        bias: sign * fitted.intercept() + rate.ln(),
        weights,
    };
    let scored: Vec<(f64, bool)> = test
        .iter()
        .map(|r| {
            (
                lambdalake_views::fraud::score(&r.f, Some(&model)).value,
                r.fraud,
            )
        })
        .collect();
    let q = quality(&scored, 1.0 / rate);
    Ok(Training::Trained(TrainedModel {
        model,
        trained_on: train.len() as u64,
        held_out: test.len() as u64,
        precision: q.precision,
        recall: q.recall,
        auc: q.auc,
    }))
}

/// Precision, recall (at 0.5) and ROC AUC of scored examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub auc: Option<f64>,
}

/// The quality of `(probability, fraud)` pairs; each legitimate example counts `negative_weight`
/// times (the inverse of its sampling rate). `None` where the measure is undefined: precision
/// with nothing predicted fraud, recall without fraud, AUC without both classes.
pub fn quality(scored: &[(f64, bool)], negative_weight: f64) -> Quality {
    let positives = scored.iter().filter(|(_, f)| *f).count();
    let negatives = scored.len() - positives;
    let tp = scored.iter().filter(|(p, f)| *f && *p >= 0.5).count() as f64;
    let fp = scored.iter().filter(|(p, f)| !*f && *p >= 0.5).count() as f64 * negative_weight;
    let precision = (tp + fp > 0.0).then(|| tp / (tp + fp));
    let recall = (positives > 0).then(|| tp / positives as f64);
    let auc = (positives > 0 && negatives > 0).then(|| {
        // Mann–Whitney: the share of (fraud, legitimate) pairs ranked right, ties one half
        let mut sorted: Vec<(f64, bool)> = scored.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut below = 0.0; // legitimate examples with a strictly lower score
        let mut right = 0.0;
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                j += 1;
            }
            let pos = sorted[i..j].iter().filter(|(_, f)| *f).count() as f64;
            let neg = (j - i) as f64 - pos;
            right += pos * (below + neg / 2.0);
            below += neg;
            i = j;
        }
        right / (positives as f64 * negatives as f64)
    });
    Quality {
        precision,
        recall,
        auc,
    }
}
