//! What the batch layer publishes for the speed layer — the fraud model, card profiles and
//! device baselines, as JSON under the keys of `lambdalake_views::keys` — cached, so a new model
//! is picked up without a restart. The model is read again every refresh interval; profiles and
//! baselines (one key per card or device, read as cards and devices show up, absent ones
//! remembered as absent) are dropped from the cache when `{p}:reference:version` changes: the
//! batch layer writes the profiles and baselines of a run, then bumps that key.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lambdalake_views::fraud::{CardProfile, DeviceBaseline, Model};
use lambdalake_views::keys::Keys;
use serde::de::DeserializeOwned;

use crate::metrics;

pub struct ReferenceCache {
    refresh: Duration,
    loaded_at: Option<Instant>,
    model: Option<Model>,
    /// `{p}:reference:version` when profiles and baselines were last cleared.
    version: Option<String>,
    profiles: HashMap<String, Option<CardProfile>>,
    baselines: HashMap<String, Option<DeviceBaseline>>,
}

impl ReferenceCache {
    pub fn new(refresh: Duration) -> Self {
        ReferenceCache {
            refresh,
            loaded_at: None,
            model: None,
            version: None,
            profiles: HashMap::new(),
            baselines: HashMap::new(),
        }
    }

    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    pub fn profiles(&self) -> &HashMap<String, Option<CardProfile>> {
        &self.profiles
    }

    pub fn baselines(&self) -> &HashMap<String, Option<DeviceBaseline>> {
        &self.baselines
    }

    /// Reload everything when the refresh interval has passed, and load what `cards` and
    /// `devices` need that is not cached.
    pub fn refresh(
        &mut self,
        con: &mut redis::Connection,
        keys: &Keys,
        cards: &HashSet<String>,
        devices: &HashSet<String>,
    ) -> redis::RedisResult<()> {
        if self.loaded_at.is_none_or(|t| t.elapsed() >= self.refresh) {
            let raw: Option<String> = redis::cmd("GET").arg(keys.model()).query(con)?;
            let model = raw.and_then(|r| parse::<Model>(&keys.model(), &r));
            if model.as_ref().map(|m| &m.version) != self.model.as_ref().map(|m| &m.version) {
                let old = self.model.as_ref().map_or("rules", |m| m.version.as_str());
                let new = model.as_ref().map_or("rules", |m| m.version.as_str());
                tracing::info!(old, new, "fraud model changed");
                metrics::MODEL.reset();
            }
            metrics::MODEL
                .with_label_values(&[model.as_ref().map_or("rules", |m| m.version.as_str())])
                .set(1);
            self.model = model;
            // profiles and baselines are many: reloaded only when the batch layer says it
            // published new ones
            let version: Option<String> =
                redis::cmd("GET").arg(keys.reference_version()).query(con)?;
            if version != self.version {
                if self.loaded_at.is_some() {
                    tracing::info!(?version, "new card profiles and device baselines published");
                }
                self.profiles.clear();
                self.baselines.clear();
                self.version = version;
            }
            self.loaded_at = Some(Instant::now());
        }
        let cards: Vec<&String> = cards
            .iter()
            .filter(|c| !self.profiles.contains_key(*c))
            .collect();
        let devices: Vec<&String> = devices
            .iter()
            .filter(|d| !self.baselines.contains_key(*d))
            .collect();
        load(con, &cards, |c| keys.card_profile(c), &mut self.profiles)?;
        load(
            con,
            &devices,
            |d| keys.device_baseline(d),
            &mut self.baselines,
        )?;
        Ok(())
    }
}

fn load<T: DeserializeOwned>(
    con: &mut redis::Connection,
    ids: &[&String],
    key: impl Fn(&str) -> String,
    into: &mut HashMap<String, Option<T>>,
) -> redis::RedisResult<()> {
    for chunk in ids.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|id| key(id)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(con)?;
        for ((id, k), v) in chunk.iter().zip(&keys).zip(values) {
            into.insert((*id).clone(), v.and_then(|v| parse(k, &v)));
        }
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(key: &str, raw: &str) -> Option<T> {
    match serde_json::from_str(raw) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring unreadable reference data");
            None
        }
    }
}
