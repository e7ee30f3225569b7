//! The atomic apply: one Redis script call per micro-batch per partition writes the plan's view
//! updates and the partition's next offset together (see `apply.lua`).

use std::sync::LazyLock;

use std::collections::BTreeMap;

use lambdalake_views::keys::{Keys, StoredCard, StoredSensor};
use redis::{Script, Value};

use crate::plan::Plan;

const SOURCE: &str = include_str!("apply.lua");
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

/// Where a partition's batch sits in its log and in event time.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// First offset the batch covers.
    pub first: i64,
    /// The offset after the batch's last record.
    pub next: i64,
    /// The operator watermark after the batch (events behind it are late from now on).
    pub watermark: Option<i64>,
    pub now_ms: i64,
    pub ttl_ms: i64,
    pub alerts_kept: usize,
    /// Accept a batch that starts after the stored offset (the records in between were deleted
    /// by retention; the caller checked).
    pub gap_ok: bool,
    /// Refuse a batch that does not continue the stored offset (exactly once). Off in the
    /// at-least/at-most-once modes: the batch is written wherever the group's offsets put it.
    pub fenced: bool,
}

/// What the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The stored offset is at or past the batch's end: it was applied already.
    AlreadyApplied {
        stored: i64,
    },
    /// The batch does not start at the stored offset: seek to it and read again.
    Mismatch {
        stored: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the apply script: {0}")]
    Reply(String),
}

/// Run the script for one partition's plan.
pub fn apply(
    con: &mut redis::Connection,
    keys: &Keys,
    target: &Target<'_>,
    plan: &Plan,
) -> Result<Outcome, ApplyError> {
    run(con, &invocation(keys, target, plan)?)
}

/// Run a prepared script call (see [`invocation`]); it can be run again after a connection error.
/// The script is loaded when Redis does not know it (first call, or after a restart).
pub fn run(con: &mut redis::Connection, cmd: &redis::Cmd) -> Result<Outcome, ApplyError> {
    let reply: Value = match cmd.query(con) {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SOURCE)
                .query::<String>(con)?;
            cmd.query(con)?
        }
        other => other?,
    };
    parse_reply(reply)
}

/// The script call that applies `plan` to `target`'s partition.
pub fn invocation(keys: &Keys, target: &Target<'_>, plan: &Plan) -> Result<redis::Cmd, ApplyError> {
    // EVALSHA with the arguments in one buffer (a ScriptInvocation keeps one allocation per
    // argument and copies them all again to send)
    let fields = plan.sensors.len()
        + 2 * plan.cards.len()
        + 2 * plan.sessions.len()
        + 3 * plan.card_memory.len()
        + 64;
    let mut inv = redis::Cmd::with_capacity(2 * fields + plan.alerts.len() * 2, 200 * fields);
    inv.arg("EVALSHA").arg(SCRIPT.get_hash()).arg(0);
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    inv.arg(keys.partition(target.topic, target.partition))
        .arg(target.first)
        .arg(target.next)
        .arg(opt(plan.max_ts))
        .arg(opt(target.watermark))
        .arg(target.now_ms)
        .arg(target.ttl_ms)
        .arg(keys.seen(target.topic, target.partition))
        .arg(if target.gap_ok { "1" } else { "0" })
        .arg(if target.fenced { "1" } else { "0" });

    inv.arg(plan.ids_by_minute.len());
    for (minute, ids) in &plan.ids_by_minute {
        let mut joined = String::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
        for id in ids {
            joined.push_str(id);
            joined.push('\n');
        }
        inv.arg(*minute).arg(joined);
    }

    // hash writes: one per (view, window start) for windows
    let mut hashes: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for ((view, start, device), w, agg) in &plan.sensors {
        let stored = StoredSensor::new(*w, agg).map_err(|e| ApplyError::Reply(e.to_string()))?;
        hashes
            .entry(keys.sensor_windows(*view, *start))
            .or_default()
            .push((device.clone(), json(&stored)?));
    }
    for ((start, card), w, agg) in &plan.cards {
        hashes
            .entry(keys.card_windows(*start))
            .or_default()
            .push((card.clone(), StoredCard::json(*w, agg)));
    }
    // the session view, by the minute a session starts in (one session per card and minute)
    let minute = |ms: i64| ms.div_euclid(60_000) * 60_000;
    let mut deletes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in &plan.sessions {
        let written: Vec<i64> = u
            .write
            .iter()
            .map(|(w, _)| minute(w.start.millis()))
            .collect();
        for (w, agg) in &u.write {
            hashes
                .entry(keys.card_sessions(minute(w.start.millis())))
                .or_default()
                .push((u.card.clone(), StoredCard::json(*w, agg)));
        }
        for start in &u.delete {
            // a session merged into one starting in the same minute is overwritten, not deleted
            if !written.contains(&minute(*start)) {
                deletes
                    .entry(keys.card_sessions(minute(*start)))
                    .or_default()
                    .push(u.card.clone());
            }
        }
    }
    // what each card remembers, for a restart
    if !plan.card_memory.is_empty() {
        let key = keys.speed_cards(target.topic, target.partition);
        for (card, m) in &plan.card_memory {
            hashes
                .entry(key.clone())
                .or_default()
                .push((card.clone(), m.to_json()));
        }
    }
    inv.arg(hashes.len());
    for (key, fields) in &hashes {
        inv.arg(key).arg(fields.len());
        for (f, v) in fields {
            inv.arg(f).arg(v);
        }
    }
    inv.arg(deletes.len());
    for (key, fields) in &deletes {
        inv.arg(key).arg(fields.len());
        for f in fields {
            inv.arg(f);
        }
    }

    if plan.card_memory.is_empty() {
        inv.arg("").arg("").arg(0);
    } else {
        inv.arg(keys.speed_card_index(target.topic, target.partition))
            .arg(keys.speed_cards(target.topic, target.partition))
            .arg(plan.card_memory.len());
        for (card, m) in &plan.card_memory {
            inv.arg(m.matters_until()).arg(card);
        }
    }

    inv.arg(keys.alerts())
        .arg(target.alerts_kept)
        .arg(plan.alerts.len());
    for a in &plan.alerts {
        inv.arg(a.ts).arg(json(a)?);
    }

    Ok(inv)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, ApplyError> {
    serde_json::to_string(v).map_err(|e| ApplyError::Reply(e.to_string()))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn parse_reply(reply: Value) -> Result<Outcome, ApplyError> {
    let Value::Array(items) = &reply else {
        return Err(ApplyError::Reply(format!("{reply:?}")));
    };
    let words: Vec<String> = items.iter().filter_map(text).collect();
    let stored = || {
        words
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApplyError::Reply(format!("{reply:?}")))
    };
    match words.first().map(String::as_str) {
        Some("ok") => Ok(Outcome::Applied),
        Some("skip") => Ok(Outcome::AlreadyApplied { stored: stored()? }),
        Some("mismatch") => Ok(Outcome::Mismatch { stored: stored()? }),
        _ => Err(ApplyError::Reply(format!("{reply:?}"))),
    }
}
