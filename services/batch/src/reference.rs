//! What the speed layer reads from the batch layer, written to Redis after a version is
//! committed in Postgres: every card profile and device baseline (JSON of
//! `lambdalake_views::fraud::{CardProfile, DeviceBaseline}` under `{p}:profile:card:{id}` and
//! `{p}:baseline:device:{id}`), then the fraud model (`{p}:model:fraud`, deleted when the run has
//! none), then `{p}:reference:version` = the batch version, which tells the speed layer to drop
//! its cached profiles and baselines. A reader therefore never mixes two versions' model and
//! version key; profiles are overwritten in place (each one whole).
//!
//! Postgres is the record: when Redis is unreachable the version stays published there, the
//! failure is logged and counted, and the next run writes everything again.

use std::collections::HashMap;
use std::time::Duration;

use lambdalake_views::fraud::{CardProfile, DeviceBaseline, Model};
use lambdalake_views::keys::Keys;
use polars::prelude::*;

/// Keys written per `MSET`.
const CHUNK: usize = 1000;

/// The all-hours baseline of every device in `device_baselines` (the recompute's frame).
pub fn device_baselines(df: &DataFrame) -> PolarsResult<HashMap<String, DeviceBaseline>> {
    if df.height() == 0 {
        return Ok(HashMap::new());
    }
    let all_hours = df.filter(&df.column("hour")?.is_null())?;
    let device = all_hours.column("device_id")?.str()?;
    let f = |c: &str| -> PolarsResult<Vec<f64>> {
        Ok(all_hours
            .column(c)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(0.0))
            .collect())
    };
    let (tm, ts, vm, vs) = (
        f("temperature_mean")?,
        f("temperature_std")?,
        f("vibration_mean")?,
        f("vibration_std")?,
    );
    Ok(device
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.map(|d| {
                (
                    d.to_owned(),
                    DeviceBaseline {
                        temperature_mean: tm[i],
                        temperature_std: ts[i],
                        vibration_mean: vm[i],
                        vibration_std: vs[i],
                    },
                )
            })
        })
        .collect())
}

/// Counts of what [`publish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub profiles: usize,
    pub baselines: usize,
    pub model: bool,
}

/// Write the reference data of `version` (see the module documentation). Blocking.
pub fn publish(
    redis_url: &str,
    keys: &Keys,
    version: i64,
    profiles: &HashMap<String, CardProfile>,
    baselines: &HashMap<String, DeviceBaseline>,
    model: Option<&Model>,
) -> redis::RedisResult<Written> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(30)))?;
    con.set_write_timeout(Some(Duration::from_secs(30)))?;
    write_all(&mut con, profiles, |id| keys.card_profile(id))?;
    write_all(&mut con, baselines, |id| keys.device_baseline(id))?;
    match model {
        Some(m) => {
            let json = serde_json::to_string(m).expect("a model serializes");
            redis::cmd("SET")
                .arg(keys.model())
                .arg(json)
                .query::<()>(&mut con)?;
        }
        None => redis::cmd("DEL").arg(keys.model()).query::<()>(&mut con)?,
    }
    redis::cmd("SET")
        .arg(keys.reference_version())
        .arg(version)
        .query::<()>(&mut con)?;
    Ok(Written {
        profiles: profiles.len(),
        baselines: baselines.len(),
        model: model.is_some(),
    })
}

fn write_all<T: serde::Serialize>(
    con: &mut redis::Connection,
    items: &HashMap<String, T>,
    key: impl Fn(&str) -> String,
) -> redis::RedisResult<()> {
    let items: Vec<(&String, &T)> = items.iter().collect();
    for chunk in items.chunks(CHUNK) {
        let mut cmd = redis::cmd("MSET");
        for (id, v) in chunk {
            cmd.arg(key(id))
                .arg(serde_json::to_string(v).expect("reference data serializes"));
        }
        cmd.query::<()>(con)?;
    }
    Ok(())
}
