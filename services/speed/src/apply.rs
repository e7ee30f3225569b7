//! The atomic apply: one Redis script call per micro-batch per partition writes the plan's view
//! updates and the partition's next offset together (see `apply.lua`).

use std::sync::LazyLock;

use lambdalake_views::keys::{CardView, Keys};
use redis::{Script, Value};

use crate::plan::{Plan, history_member};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("apply.lua")));

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
    pub watermark: i64,
    pub now_ms: i64,
    pub ttl_ms: i64,
    pub alerts_kept: usize,
    /// Accept a batch that starts after the stored offset (the records in between were deleted
    /// by retention; the caller checked).
    pub gap_ok: bool,
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
    /// These event ids were already counted; nothing was written.
    Duplicates(Vec<String>),
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
    let mut inv = SCRIPT.prepare_invoke();
    let max_ts = plan.max_ts.unwrap_or(i64::MIN / 2);
    inv.arg(keys.partition(target.topic, target.partition))
        .arg(target.first)
        .arg(target.next)
        .arg(max_ts)
        .arg(target.watermark)
        .arg(target.now_ms)
        .arg(target.ttl_ms)
        .arg(keys.seen(target.topic, target.partition))
        .arg(if target.gap_ok { "1" } else { "0" });

    inv.arg(plan.ids_by_minute.len());
    for (minute, ids) in &plan.ids_by_minute {
        inv.arg(*minute).arg(ids.len());
        for id in ids {
            inv.arg(id);
        }
    }

    inv.arg(plan.sensor_windows.len());
    for (view, device, w, agg) in &plan.sensor_windows {
        let start = w.start.millis();
        inv.arg(keys.sensor_window(*view, device, start))
            .arg(keys.sensor_index(*view, device))
            .arg(start)
            .arg(w.end.millis())
            .arg(agg.count)
            .arg(sum_i64(agg.temperature_c.sum_micro)?)
            .arg(agg.temperature_c.min.to_string())
            .arg(agg.temperature_c.max.to_string())
            .arg(sum_i64(agg.vibration_mm_s.sum_micro)?)
            .arg(agg.vibration_mm_s.min.to_string())
            .arg(agg.vibration_mm_s.max.to_string());
    }

    let view = CardView::OneMinute;
    inv.arg(plan.card_windows.len());
    for (card, w, agg) in &plan.card_windows {
        let start = w.start.millis();
        inv.arg(keys.card_window(view, card, start))
            .arg(keys.card_merchants(view, card, start))
            .arg(keys.card_countries(view, card, start))
            .arg(keys.card_index(view, card))
            .arg(start)
            .arg(w.end.millis())
            .arg(agg.count)
            .arg(agg.amount_sum_cents)
            .arg(agg.amount_max_cents);
        inv.arg(agg.merchants.len());
        for m in &agg.merchants {
            inv.arg(m);
        }
        inv.arg(agg.countries.len());
        for c in &agg.countries {
            inv.arg(c);
        }
    }

    // session keys are `{base}{start}{suffix}`: split a key built for start 0 around the "0"
    let view = CardView::Session;
    inv.arg(plan.card_sessions.len());
    for (card, sessions) in &plan.card_sessions {
        let (wbase, suffix) = split_key(&keys.card_window(view, card, 0), card)?;
        let (mbase, _) = split_key(&keys.card_merchants(view, card, 0), card)?;
        let (cbase, _) = split_key(&keys.card_countries(view, card, 0), card)?;
        inv.arg(keys.card_index(view, card))
            .arg(wbase)
            .arg(mbase)
            .arg(cbase)
            .arg(suffix)
            .arg(sessions.len());
        for (w, agg) in sessions {
            inv.arg(w.start.millis())
                .arg(w.end.millis())
                .arg(agg.count)
                .arg(agg.amount_sum_cents)
                .arg(agg.amount_max_cents);
            inv.arg(agg.merchants.len());
            for m in &agg.merchants {
                inv.arg(m);
            }
            inv.arg(agg.countries.len());
            for c in &agg.countries {
                inv.arg(c);
            }
        }
    }

    inv.arg(plan.card_history.len());
    for (card, cut, entries) in &plan.card_history {
        inv.arg(keys.card_recent(card)).arg(*cut).arg(entries.len());
        for (seen, id) in entries {
            inv.arg(seen.ts_ms).arg(history_member(seen, id));
        }
    }

    inv.arg(keys.alerts())
        .arg(target.alerts_kept)
        .arg(plan.alerts.len());
    for a in &plan.alerts {
        let json = serde_json::to_string(a).map_err(|e| ApplyError::Reply(e.to_string()))?;
        inv.arg(a.ts).arg(json);
    }

    let reply: Value = inv.invoke(con)?;
    parse_reply(reply)
}

fn sum_i64(v: i128) -> Result<i64, ApplyError> {
    i64::try_from(v).map_err(|_| ApplyError::Reply(format!("window sum {v} exceeds 64 bits")))
}

/// `{base}0{suffix}` → (`base`, `suffix`), where the suffix is `:{id}`.
fn split_key(key: &str, id: &str) -> Result<(String, String), ApplyError> {
    let suffix = format!(":{id}");
    let head = key
        .strip_suffix(&suffix)
        .and_then(|k| k.strip_suffix('0'))
        .ok_or_else(|| ApplyError::Reply(format!("unexpected session key shape {key:?}")))?;
    Ok((head.to_owned(), suffix))
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
        Some("dup") => Ok(Outcome::Duplicates(words[1..].to_vec())),
        _ => Err(ApplyError::Reply(format!("{reply:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_split_around_the_start() {
        let keys = Keys::default();
        let card = "c:0";
        let (base, suffix) =
            split_key(&keys.card_window(CardView::Session, card, 0), card).unwrap();
        assert_eq!(
            format!("{base}1764064800000{suffix}"),
            keys.card_window(CardView::Session, card, 1_764_064_800_000)
        );
    }
}
