use std::fmt::Debug;

use lambdalake_events::Event;
use proptest::prelude::*;

use super::*;
use crate::testing::{SPAN_MS, T0, payment, payments, reading, readings, same_bits};

const LATENESS_MS: i64 = Watermarks::DEFAULT_LATENESS_MS;
const IDLE_AFTER_MS: i64 = 5_000;

/// One event's arrival at the operator.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    event: usize,
    partition: i32,
    now_ms: i64,
}

/// The partition of a key, as Kafka keeps one key's events in one partition.
fn partition_of(key: &str) -> i32 {
    key.bytes().map(i32::from).sum::<i32>() % 3
}

/// Events and an arrival order in which none is late. Each event arrives at event time
/// `ts + delay`, `0 <= delay < lateness`, so an event that arrived before it has
/// `ts' <= ts' + delay' <= ts + delay < ts + lateness`: the watermark, at most the largest `ts'`
/// seen minus the lateness, is still behind `ts`. That holds whatever the idle rule does, so
/// processing time advances 0–2 s per event and partitions do go idle now and then.
fn in_time<E: Event + Clone + Debug>(
    events: impl Strategy<Value = Vec<E>>,
) -> impl Strategy<Value = (Vec<E>, Vec<Arrival>)> {
    events
        .prop_flat_map(|events| {
            let n = events.len();
            let draws = prop::collection::vec((0..LATENESS_MS, 0i64..2_000), n);
            (Just(events), draws)
        })
        .prop_map(|(events, draws)| {
            let mut order: Vec<usize> = (0..events.len()).collect();
            order.sort_by_key(|&i| events[i].ts().millis() + draws[i].0);
            let mut now_ms = T0 + SPAN_MS;
            let arrivals = order
                .into_iter()
                .map(|event| {
                    now_ms += draws[event].1;
                    Arrival {
                        event,
                        partition: partition_of(events[event].key()),
                        now_ms,
                    }
                })
                .collect();
            (events, arrivals)
        })
}

/// Events in any order, from any of 3 partitions, processing time advancing 0–3 s per event.
fn any_order<E: Event + Clone + Debug>(
    events: impl Strategy<Value = Vec<E>>,
) -> impl Strategy<Value = (Vec<E>, Vec<Arrival>)> {
    events
        .prop_flat_map(|events| {
            let n = events.len();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let draws = prop::collection::vec((0i32..3, 0i64..3_000), n);
            (Just(events), order, draws)
        })
        .prop_map(|(events, order, draws)| {
            let mut now_ms = T0 + SPAN_MS;
            let arrivals = order
                .into_iter()
                .zip(draws)
                .map(|(event, (partition, step))| {
                    now_ms += step;
                    Arrival {
                        event,
                        partition,
                        now_ms,
                    }
                })
                .collect();
            (events, arrivals)
        })
}

fn run<E>(
    op: &mut Operator,
    events: &[E],
    arrivals: &[Arrival],
    push: impl Fn(&mut Operator, i32, &E, i64) -> Outcome,
) -> Vec<Outcome> {
    arrivals
        .iter()
        .map(|a| push(op, a.partition, &events[a.event], a.now_ms))
        .collect()
}

/// Nothing is lost: every event is applied once per id, dropped as a copy of an applied one, or
/// reported late, and every id is applied or reported late. Returns the events not reported
/// late, in arrival order — the table the operator's views must equal the views of.
fn accounted<E: Event + Clone>(
    events: &[E],
    arrivals: &[Arrival],
    outcomes: &[Outcome],
) -> Result<Vec<E>, TestCaseError> {
    let mut applied = HashSet::new();
    let mut late = HashSet::new();
    let mut kept = Vec::new();
    for (a, &outcome) in arrivals.iter().zip(outcomes) {
        let e = &events[a.event];
        let id = e.event_id().as_str();
        match outcome {
            Outcome::Applied => {
                prop_assert!(applied.insert(id), "{id} applied twice");
                kept.push(e.clone());
            }
            Outcome::Duplicate => {
                prop_assert!(applied.contains(id), "{id} dropped as a copy of nothing");
                kept.push(e.clone());
            }
            Outcome::Late { lateness_ms } => {
                prop_assert!(lateness_ms > 0);
                late.insert(id);
            }
        }
    }
    for e in events {
        let id = e.event_id().as_str();
        prop_assert!(applied.contains(id) || late.contains(id), "{id} lost");
    }
    Ok(kept)
}

fn count(outcomes: &[Outcome], which: Outcome) -> usize {
    outcomes.iter().filter(|&&o| o == which).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sensor_views_incrementally_equal_the_table_views_in_any_order_in_time(
        (readings, arrivals) in in_time(readings(80)),
    ) {
        let distinct = table::dedupe(&readings).len();
        for spec in [WindowSpec::ONE_MINUTE, WindowSpec::FIVE_BY_ONE_MINUTE] {
            let views = Views { sensor: spec, ..Views::DEFAULT };
            let mut op = Operator::new(views, LATENESS_MS, IDLE_AFTER_MS);
            let outcomes = run(&mut op, &readings, &arrivals, Operator::push_sensor);
            prop_assert_eq!(count(&outcomes, Outcome::Applied), distinct);
            prop_assert_eq!(count(&outcomes, Outcome::Duplicate), readings.len() - distinct);

            let one_shot = table::sensor_windows(&readings, spec);
            prop_assert_eq!(op.sensor_windows(), &one_shot);
            prop_assert!(same_bits(op.sensor_windows(), &one_shot));
        }
    }

    #[test]
    fn card_views_incrementally_equal_the_table_views_in_any_order_in_time(
        (payments, arrivals) in in_time(payments(80)),
        small_gap in 1_000i64..60_000,
    ) {
        let distinct = table::dedupe(&payments).len();
        for (spec, gap) in [
            (WindowSpec::ONE_MINUTE, Sessions::CARD_GAP_MS),
            (WindowSpec::FIVE_BY_ONE_MINUTE, small_gap),
        ] {
            let views = Views { card: spec, card_session_gap_ms: gap, ..Views::DEFAULT };
            let mut op = Operator::new(views, LATENESS_MS, IDLE_AFTER_MS);
            let outcomes = run(&mut op, &payments, &arrivals, Operator::push_payment);
            prop_assert_eq!(count(&outcomes, Outcome::Applied), distinct);
            prop_assert_eq!(count(&outcomes, Outcome::Duplicate), payments.len() - distinct);

            prop_assert_eq!(op.card_windows(), &table::card_windows(&payments, spec));
            prop_assert_eq!(op.card_sessions(), table::card_sessions(&payments, gap));
        }
    }

    #[test]
    fn sensor_events_are_never_lost_and_late_ones_are_left_out(
        (readings, arrivals) in any_order(readings(80)),
        lateness in 0i64..60_000,
    ) {
        let views = Views { sensor: WindowSpec::FIVE_BY_ONE_MINUTE, ..Views::DEFAULT };
        let mut op = Operator::new(views, lateness, IDLE_AFTER_MS);
        let outcomes = run(&mut op, &readings, &arrivals, Operator::push_sensor);
        let kept = accounted(&readings, &arrivals, &outcomes)?;

        let one_shot = table::sensor_windows(&kept, views.sensor);
        prop_assert_eq!(op.sensor_windows(), &one_shot);
        prop_assert!(same_bits(op.sensor_windows(), &one_shot));
    }

    #[test]
    fn payment_events_are_never_lost_and_late_ones_are_left_out(
        (payments, arrivals) in any_order(payments(80)),
        lateness in 0i64..60_000,
        gap in 1_000i64..60_000,
    ) {
        let views = Views { card_session_gap_ms: gap, ..Views::DEFAULT };
        let mut op = Operator::new(views, lateness, IDLE_AFTER_MS);
        let outcomes = run(&mut op, &payments, &arrivals, Operator::push_payment);
        let kept = accounted(&payments, &arrivals, &outcomes)?;

        prop_assert_eq!(op.card_windows(), &table::card_windows(&kept, views.card));
        prop_assert_eq!(op.card_sessions(), table::card_sessions(&kept, gap));
    }
}

#[test]
fn late_is_judged_against_the_watermark_before_the_event() {
    let mut op = Operator::new(Views::DEFAULT, 10_000, 60_000);
    let at = |ms: i64, id: &str| reading(id, "d", T0 + ms, 20.0);
    // no watermark yet, and an event does not make itself late
    assert_eq!(op.push_sensor(0, &at(20_000, "a"), 0), Outcome::Applied);
    assert_eq!(op.push_sensor(0, &at(90_000, "b"), 1), Outcome::Applied);
    // the watermark is now 90 s - 10 s
    assert_eq!(op.push_sensor(0, &at(80_000, "c"), 2), Outcome::Applied);
    assert_eq!(
        op.push_sensor(0, &at(79_999, "d"), 3),
        Outcome::Late { lateness_ms: 1 }
    );
    // a late event is not applied nor remembered; the minute of "a" is behind the watermark,
    // so its id is forgotten
    assert_eq!(
        op.sensor_windows().values().map(|a| a.count).sum::<u64>(),
        3
    );
    assert_eq!(op.readings.seen_len(), 2);
}

#[test]
fn a_late_copy_of_an_applied_event_is_reported_late() {
    let mut op = Operator::new(Views::DEFAULT, 10_000, 60_000);
    let first = payment("a", "c", T0, 100, 1, "FR");
    assert_eq!(op.push_payment(0, &first, 0), Outcome::Applied);
    assert_eq!(op.push_payment(0, &first, 1), Outcome::Duplicate);
    let later = payment("b", "c", T0 + 20_000, 100, 1, "FR");
    assert_eq!(op.push_payment(0, &later, 2), Outcome::Applied);
    assert_eq!(
        op.push_payment(0, &first, 3),
        Outcome::Late {
            lateness_ms: 10_000
        }
    );
}

#[test]
fn each_topic_has_its_own_watermark() {
    let mut op = Operator::new(Views::DEFAULT, 10_000, 60_000);
    let ahead = payment("p", "c", T0 + 3_600_000, 100, 1, "FR");
    assert_eq!(op.push_payment(0, &ahead, 0), Outcome::Applied);
    assert_eq!(
        op.push_sensor(0, &reading("r", "d", T0, 20.0), 1),
        Outcome::Applied
    );
}

#[test]
fn applied_ids_are_forgotten_once_their_minute_is_behind_the_watermark() {
    let mut op = Operator::new(Views::DEFAULT, 30_000, 60_000);
    let readings: Vec<_> = (0..600)
        .map(|s| reading(&format!("e{s}"), "d", T0 + s * 1_000, 20.0))
        .collect();
    for (s, r) in (0..).zip(&readings) {
        assert_eq!(op.push_sensor(0, r, s), Outcome::Applied);
    }
    // at most the minutes within the lateness and the current one
    assert!(op.readings.seen_len() <= 150, "{}", op.readings.seen_len());
    // a forgotten id is late, never applied twice
    assert!(matches!(
        op.push_sensor(0, &readings[0], 600),
        Outcome::Late { .. }
    ));
}
