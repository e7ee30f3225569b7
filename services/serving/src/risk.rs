//! `GET /v1/lambda/cards/{card_id}/risk`: what the Lambda architecture knows of a card's fraud
//! risk — its profile and the fraud model of the latest batch version (Postgres), and the score
//! the speed layer gave the card's newest payment (Redis: `last` in the card's state,
//! `{p}:speed:cards:{topic}:{partition}`).
//!
//! The card's partition is not computed (the producer's partitioner is not the serving layer's
//! business): the card's field is read from every payments partition's state hash the speed
//! layer keeps, in one pipeline; a card found in several (the topic gained partitions) gives its
//! newest score. Each part is missing, and listed in `degraded`, when its store is unreachable.

use lambdalake_views::keys::LatestScore;
use serde::Serialize;

use crate::State;
use crate::stores::StoreError;
use crate::windows::{BatchInfo, SpeedInfo, replaced, rfc3339, version_exists};

/// A card's profile in the batch views (payments labelled fraud excluded).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Profile {
    /// Legitimate payments the profile was computed from.
    pub payments: i64,
    /// Mean amount, in the currency's units.
    pub amount_mean: f64,
    /// Population standard deviation of the amount, in the currency's units.
    pub amount_std: f64,
    /// The most frequent country.
    pub home_country: String,
    /// Every country the card paid in.
    pub countries: Vec<String>,
    /// The five most frequent merchant categories.
    pub mccs: Vec<i32>,
    /// UTC hours of day with payments.
    pub active_hours: Vec<i16>,
}

/// The fraud model of the batch version used.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// `batch-vN`: the name scores computed with it carry in `model_version`.
    pub name: String,
    /// Payments it was trained on (after sampling) and held out for its quality figures.
    pub trained_on: i64,
    pub held_out: i64,
    /// On the held-out payments, at a 0.5 threshold; `null` when undefined.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub auc: Option<f64>,
}

/// The score of the card's newest payment (by event time) the speed layer applied.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Score {
    /// The payment's event time, RFC 3339.
    pub ts: String,
    pub event_id: String,
    pub txn_id: String,
    /// Fraud probability, 0 … 1.
    pub score: f64,
    /// `batch-vN` (the model that scored it) or `rules` (no model yet).
    pub model_version: String,
    /// The rules that fired.
    pub reasons: Vec<String>,
    /// `amount_z`, `recent_count`, `travel_kmh`, `new_country`, `mcc_risk`.
    #[schema(value_type = Object)]
    pub features: serde_json::Value,
    /// When the speed layer scored it, RFC 3339.
    pub scored_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Risk {
    pub card_id: String,
    /// `null`: the latest version has no profile for the card (no legitimate payment before
    /// its cutoff), no version exists, or Postgres is unreachable.
    pub profile: Option<Profile>,
    /// `null`: the speed layer holds no payment of the card (none within the view TTL), or
    /// Redis is unreachable.
    pub latest_score: Option<Score>,
    /// `null`: the latest version trained no model (too few frauds): scores come from rules.
    pub model: Option<ModelInfo>,
    pub batch: BatchInfo,
    pub speed: SpeedInfo,
    pub degraded: Vec<String>,
}

pub async fn risk(state: &State, card: &str) -> Risk {
    let mut degraded = Vec::new();
    let (batch, profile, model) = match batch_part(state, card).await {
        Ok(Some((version, cutoff, profile, model))) => (
            BatchInfo {
                version: Some(version),
                cutoff: cutoff.map(rfc3339),
            },
            profile,
            model,
        ),
        Ok(None) => (no_batch(), None, None),
        Err(e) => {
            tracing::warn!(error = %e, "batch views unreachable");
            degraded.push("batch".to_owned());
            (no_batch(), None, None)
        }
    };
    let latest_score = match latest_score(state, card).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "speed views unreachable");
            degraded.push("speed".to_owned());
            None
        }
    };
    Risk {
        card_id: card.to_owned(),
        profile,
        latest_score,
        model,
        batch,
        speed: SpeedInfo {
            freshness_ms: state.speed_freshness().await,
        },
        degraded,
    }
}

fn no_batch() -> BatchInfo {
    BatchInfo {
        version: None,
        cutoff: None,
    }
}

type BatchPart = (i64, Option<i64>, Option<Profile>, Option<ModelInfo>);

/// The latest version, the card's profile and the model in it (read after the version: see
/// [`crate::windows`] on why not one statement).
async fn batch_part(state: &State, card: &str) -> Result<Option<BatchPart>, StoreError> {
    for attempt in 0..3 {
        let run = if attempt == 0 {
            state.runs.get(&state.pg).await?
        } else {
            state.runs.read(&state.pg).await?
        };
        let Some(crate::cache::LatestVersion {
            version, cutoff, ..
        }) = run
        else {
            return Ok(None);
        };
        let key = card.to_owned();
        let (profile, model) = state
            .pg
            .with(|c| async move {
                let profile = c
                    .query_opt(
                        "select payments, amount_mean_cents, amount_std_cents, home_country,
                                countries, mccs, active_hours
                         from card_profiles where version = $1 and card_id = $2",
                        &[&version, &key],
                    )
                    .await?;
                let model = c
                    .query_opt(
                        "select trained_on, held_out, precision, recall, auc
                         from fraud_models where version = $1",
                        &[&version],
                    )
                    .await?;
                Ok((profile, model))
            })
            .await?;
        if profile.is_none() && !version_exists(&state.pg, version).await? {
            continue;
        }
        let profile = profile.map(|r| Profile {
            payments: r.get(0),
            amount_mean: r.get::<_, f64>(1) / 100.0,
            amount_std: r.get::<_, f64>(2) / 100.0,
            home_country: r.get(3),
            countries: r.get(4),
            mccs: r.get(5),
            active_hours: r.get(6),
        });
        let model = model.map(|r| ModelInfo {
            name: lambdalake_views::fraud::model_name(version),
            trained_on: r.get(0),
            held_out: r.get(1),
            precision: r.get(2),
            recall: r.get(3),
            auc: r.get(4),
        });
        return Ok(Some((version, cutoff, profile, model)));
    }
    Err(replaced())
}

/// The newest `last` of the card over every payments partition's state.
async fn latest_score(state: &State, card: &str) -> Result<Option<Score>, StoreError> {
    let prefix = format!(
        "{}:speed:part:{}:",
        state.keys.prefix(),
        state.payments_topic
    );
    let hashes: Vec<String> = state
        .partition_keys()
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix)?.parse::<i32>().ok())
        .map(|p| state.keys.speed_cards(&state.payments_topic, p))
        .collect();
    if hashes.is_empty() {
        return Ok(None);
    }
    let mut pipe = redis::pipe();
    for h in &hashes {
        pipe.cmd("HGET").arg(h).arg(card);
    }
    let found: Vec<Option<String>> = state.redis.query(&pipe).await?;
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        last: Option<LatestScore>,
    }
    let newest = found
        .iter()
        .flatten()
        .filter_map(|json| match serde_json::from_str::<Stored>(json) {
            Ok(s) => s.last,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable card state");
                None
            }
        })
        .max_by_key(|l| l.ts);
    Ok(newest.map(|l| Score {
        ts: rfc3339(l.ts),
        event_id: l.event_id,
        txn_id: l.txn_id,
        score: l.score,
        model_version: l.model_version,
        reasons: l.reasons,
        features: serde_json::to_value(l.features).unwrap_or_default(),
        scored_at: rfc3339(l.scored_at_ms),
    }))
}
