//! The views of whole tables: what the batch layer and the lakehouse compute, and the reference
//! the speed layer's incremental result ([`crate::incremental`]) must equal.
//!
//! Every function counts an event id once — the first occurrence in the table wins (a retry is
//! an exact copy, so which copy wins does not matter) — and its result does not depend on the
//! order of the table.

use std::collections::{BTreeMap, HashMap, HashSet, btree_map::Entry};

use lambdalake_events::{Event, EventTime, Payment, SensorReading};

use crate::aggregate::{CardAgg, Merge, SensorAgg};
use crate::window::{SessionAggs, Window, WindowSpec};

/// A view: one aggregate per key (device or card id) and window.
pub type Keyed<A> = BTreeMap<(String, Window), A>;

/// The first occurrence of each event id, in table order.
pub fn dedupe<'a, E: Event>(events: impl IntoIterator<Item = &'a E>) -> Vec<&'a E> {
    let mut seen = HashSet::new();
    events
        .into_iter()
        .filter(|&e| seen.insert(e.event_id().as_str()))
        .collect()
}

/// Readings per device and window of `spec`.
pub fn sensor_windows(readings: &[SensorReading], spec: WindowSpec) -> Keyed<SensorAgg> {
    let mut view = Keyed::new();
    for r in dedupe(readings) {
        fold(
            &mut view,
            r.device_id.as_str(),
            spec,
            r.ts,
            SensorAgg::of(r),
        );
    }
    view
}

/// Payments per card and window of `spec`.
pub fn card_windows(payments: &[Payment], spec: WindowSpec) -> Keyed<CardAgg> {
    let mut view = Keyed::new();
    for p in dedupe(payments) {
        fold(&mut view, p.card_id.as_str(), spec, p.ts, CardAgg::of(p));
    }
    view
}

/// Payments per card and session (sessions close after `gap_ms` without a payment; see
/// [`SessionAggs`]).
pub fn card_sessions(payments: &[Payment], gap_ms: i64) -> Keyed<CardAgg> {
    let mut payments = dedupe(payments);
    // in event-time order every payment extends the card's last session or opens one after it,
    // so no merge of two earlier sessions happens (the result is the same in any order)
    payments.sort_by_key(|p| p.ts);
    let mut cards: HashMap<&str, SessionAggs<CardAgg>> = HashMap::new();
    for p in payments {
        cards
            .entry(p.card_id.as_str())
            .or_insert_with(|| SessionAggs::new(gap_ms))
            .add_event(p.ts, CardAgg::of(p));
    }
    cards
        .into_iter()
        .flat_map(|(card, sessions)| {
            sessions
                .into_sessions()
                .into_iter()
                .map(move |(w, agg)| ((card.to_owned(), w), agg))
        })
        .collect()
}

/// Add one event's aggregate to every window of `spec` it belongs to: the per-event update of
/// the speed layer, which applied to a whole table gives the functions above. `agg` is cloned
/// for all windows but the last, which takes it.
pub(crate) fn fold<A: Merge + Clone>(
    view: &mut Keyed<A>,
    key: &str,
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
        match view.entry((key.to_owned(), w)) {
            Entry::Vacant(v) => {
                v.insert(this);
            }
            Entry::Occupied(mut o) => o.get_mut().merge(&this),
        }
    }
}

#[cfg(test)]
mod tests;
