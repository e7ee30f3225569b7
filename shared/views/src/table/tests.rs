use proptest::prelude::*;

use super::*;
use crate::testing::{T0, payment, payments, reading, readings};

fn t(ms: i64) -> EventTime {
    EventTime::from_millis_unchecked(ms)
}

fn window(start: i64, end: i64) -> Window {
    Window {
        start: t(start),
        end: t(end),
    }
}

#[test]
fn dedupe_keeps_the_first_occurrence_in_table_order() {
    let a = reading("a", "d", T0, 1.0);
    let b = reading("b", "d", T0, 2.0);
    let a_again = reading("a", "d", T0 + 5, 3.0);
    let table = [b.clone(), a.clone(), a_again, b.clone()];
    let kept: Vec<_> = dedupe(&table).into_iter().cloned().collect();
    assert_eq!(kept, [b, a]);
}

#[test]
fn a_retry_is_counted_once() {
    let r = reading("a", "d", T0 + 1, 20.0);
    let view = sensor_windows(&[r.clone(), r.clone()], WindowSpec::ONE_MINUTE);
    assert_eq!(view.len(), 1);
    assert_eq!(view[&("d".into(), window(T0, T0 + 60_000))].count, 1);
}

#[test]
fn card_sessions_split_on_a_gap_and_join_at_exactly_the_gap() {
    let gap = 10_000;
    let ps = [
        payment("a", "c", T0, 100, 1, "FR"),
        // exactly `gap` later: the sessions touch, so they are one
        payment("b", "c", T0 + gap, 200, 2, "FR"),
        // more than `gap` after the last one: a new session
        payment("c", "c", T0 + 2 * gap + 1, 300, 1, "DE"),
        payment("d", "other", T0, 400, 1, "FR"),
    ];
    let view = card_sessions(&ps, gap);
    let summary: Vec<_> = view
        .iter()
        .map(|((card, w), a)| {
            (
                card.as_str(),
                w.start.millis() - T0,
                w.end.millis() - T0,
                a.count,
                a.amount_sum_cents,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("c", 0, 2 * gap, 2, 300),
            ("c", 2 * gap + 1, 3 * gap + 1, 1, 300),
            ("other", 0, gap, 1, 400),
        ]
    );
}

/// Sessions by a linear sweep over each card's payments in event-time order, written apart from
/// [`SessionAggs`] so the two can check each other: a payment at most `gap` after the previous
/// one continues its session. Values are (count, amount sum).
fn sweep(payments: &[Payment], gap: i64) -> BTreeMap<(String, Window), (u64, i64)> {
    let mut ps = dedupe(payments);
    ps.sort_by_key(|p| (p.card_id.as_str(), p.ts));
    let mut out = BTreeMap::new();
    let mut open: Option<(&str, i64, i64, u64, i64)> = None; // card, first, last, count, sum
    for p in ps {
        let (card, ts) = (p.card_id.as_str(), p.ts.millis());
        match &mut open {
            Some((c, _, last, count, sum)) if *c == card && ts <= *last + gap => {
                *last = ts;
                *count += 1;
                *sum += p.amount.cents();
            }
            _ => {
                if let Some((c, first, last, count, sum)) = open {
                    out.insert((c.to_owned(), window(first, last + gap)), (count, sum));
                }
                open = Some((card, ts, ts, 1, p.amount.cents()));
            }
        }
    }
    if let Some((c, first, last, count, sum)) = open {
        out.insert((c.to_owned(), window(first, last + gap)), (count, sum));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn card_sessions_agree_with_a_sweep_in_any_table_order(
        (payments, shuffled) in payments(60).prop_flat_map(|ps| (Just(ps.clone()), Just(ps).prop_shuffle())),
        gap in 1i64..120_000,
    ) {
        let view = card_sessions(&payments, gap);
        let summary: BTreeMap<_, _> = view
            .iter()
            .map(|(k, a)| (k.clone(), (a.count, a.amount_sum_cents)))
            .collect();
        prop_assert_eq!(&summary, &sweep(&payments, gap));
        prop_assert_eq!(&view, &card_sessions(&shuffled, gap));
    }

    /// Every (key, window) of a view holds exactly the distinct events of the key it contains,
    /// and every event is in every window it belongs to: no event is lost, counted twice or put
    /// in a window that does not contain it.
    #[test]
    fn window_assignment_never_loses_or_duplicates_an_event(
        readings in readings(60),
        tumbling in 1i64..600_000,
        slide in 10_000i64..120_000,
        per_event in 1i64..8,
        size in 1i64..600_000,
    ) {
        let distinct = dedupe(&readings);
        let n = distinct.len() as u64;
        let total = |view: &Keyed<SensorAgg>| view.values().map(|a| a.count).sum::<u64>();

        // tumbling: one window each
        prop_assert_eq!(total(&sensor_windows(&readings, WindowSpec::Tumbling { size_ms: tumbling })), n);

        // sliding, the slide dividing the size: size / slide windows each
        let spec = WindowSpec::Sliding { size_ms: slide * per_event, slide_ms: slide };
        prop_assert_eq!(total(&sensor_windows(&readings, spec)), n * per_event as u64);

        // any size and slide (a slide longer than the size leaves events in no window)
        let spec = WindowSpec::Sliding { size_ms: size, slide_ms: slide };
        let view = sensor_windows(&readings, spec);
        for ((device, w), agg) in &view {
            let held = distinct
                .iter()
                .filter(|r| r.device_id.as_str() == device && w.contains(r.ts))
                .count() as u64;
            prop_assert_eq!(agg.count, held);
        }
        let memberships: u64 = distinct.iter().map(|r| spec.assign(r.ts).count() as u64).sum();
        prop_assert_eq!(total(&view), memberships);
    }
}
