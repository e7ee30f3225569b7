//! Event-time windows. A window is the half-open interval `[start, end)` in epoch milliseconds.

use lambdalake_events::EventTime;
use serde::Serialize;

/// `[start, end)` in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Window {
    pub start: EventTime,
    pub end: EventTime,
}

impl Window {
    pub fn contains(&self, ts: EventTime) -> bool {
        self.start <= ts && ts < self.end
    }
}

/// How events are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size_ms`, aligned on the epoch.
    Tumbling { size_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms` (aligned on the epoch); an event belongs to
    /// `size_ms / slide_ms` windows when the slide divides the size.
    Sliding { size_ms: i64, slide_ms: i64 },
}

impl WindowSpec {
    /// The default view: 1-minute tumbling windows.
    pub const ONE_MINUTE: WindowSpec = WindowSpec::Tumbling { size_ms: 60_000 };
    /// Sensors' sliding view: 5-minute windows every minute.
    pub const FIVE_BY_ONE_MINUTE: WindowSpec = WindowSpec::Sliding {
        size_ms: 300_000,
        slide_ms: 60_000,
    };

    /// Every window `ts` belongs to, in increasing start order.
    pub fn assign(self, ts: EventTime) -> impl Iterator<Item = Window> {
        let t = ts.millis();
        let (size, slide) = match self {
            WindowSpec::Tumbling { size_ms } => (size_ms.max(1), size_ms.max(1)),
            WindowSpec::Sliding { size_ms, slide_ms } => (size_ms.max(1), slide_ms.max(1)),
        };
        // starts s = k·slide with s ≤ t < s + size
        let last = t.div_euclid(slide);
        let first = (t - size).div_euclid(slide) + 1;
        (first..=last).map(move |k| {
            let start = k * slide;
            Window {
                start: EventTime::from_millis_unchecked(start),
                end: EventTime::from_millis_unchecked(start + size),
            }
        })
    }
}

/// Session windows of one key: events at most `gap_ms` apart belong to one session, which spans
/// `[first event, last event + gap)`. Sessions merge when a (late) event bridges two of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    gap_ms: i64,
    /// Disjoint, sorted by start.
    windows: Vec<Window>,
}

impl Sessions {
    /// Cards' default: 30 minutes of inactivity close a session.
    pub const CARD_GAP_MS: i64 = 30 * 60_000;

    pub fn new(gap_ms: i64) -> Self {
        Sessions {
            gap_ms: gap_ms.max(1),
            windows: Vec::new(),
        }
    }

    /// Add an event; returns the session it now belongs to (after any merge).
    pub fn add(&mut self, ts: EventTime) -> Window {
        let mut merged = Window {
            start: ts,
            end: EventTime::from_millis_unchecked(ts.millis() + self.gap_ms),
        };
        // every session overlapping [ts, ts + gap) or touching it merges into one
        self.windows.retain(|w| {
            let overlaps = w.start <= merged.end && merged.start <= w.end;
            if overlaps {
                merged.start = merged.start.min(w.start);
                merged.end = merged.end.max(w.end);
            }
            !overlaps
        });
        let at = self.windows.partition_point(|w| w.start < merged.start);
        self.windows.insert(at, merged);
        merged
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }
}

/// Sessions of one key with an aggregate each: [`Sessions`] that also merge what they hold.
///
/// [`SessionAggs::add`] takes a partial session — one event (`[ts, ts + gap)`) or a run of
/// sessions computed elsewhere (a micro-batch) — so the speed layer can pre-aggregate a batch and
/// merge it into the stored sessions with the same rule: two sessions merge when they overlap or
/// touch (`a.start <= b.end && b.start <= a.end`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionAggs<A> {
    gap_ms: i64,
    /// Disjoint, sorted by start.
    sessions: Vec<(Window, A)>,
}

impl<A: crate::aggregate::Merge> SessionAggs<A> {
    pub fn new(gap_ms: i64) -> Self {
        SessionAggs {
            gap_ms: gap_ms.max(1),
            sessions: Vec::new(),
        }
    }

    pub fn gap_ms(&self) -> i64 {
        self.gap_ms
    }

    /// Add one event at `ts` with its aggregate.
    pub fn add_event(&mut self, ts: EventTime, agg: A) -> Window {
        let w = Window {
            start: ts,
            end: EventTime::from_millis_unchecked(ts.millis() + self.gap_ms),
        };
        self.add(w, agg)
    }

    /// Add a partial session; returns the session it now belongs to (after any merge).
    ///
    /// The stored sessions are disjoint, sorted and none touches the next, so the ones `window`
    /// overlaps or touches are a contiguous run, found by binary search. The run and `agg` are
    /// merged into the run's first aggregate in place: adding an event to a session costs the
    /// event's aggregate, not a copy of the session's.
    pub fn add(&mut self, window: Window, agg: A) -> Window {
        debug_assert!(window.start <= window.end, "{window:?}");
        let first = self.sessions.partition_point(|(w, _)| w.end < window.start);
        let last = self
            .sessions
            .partition_point(|(w, _)| w.start <= window.end);
        if first == last {
            self.sessions.insert(first, (window, agg));
            return window;
        }
        let (head, run) = self.sessions[first..last].split_at_mut(1);
        let (merged, into) = &mut head[0];
        merged.start = merged.start.min(window.start);
        merged.end = merged.end.max(window.end);
        into.merge(&agg);
        for (w, a) in run.iter() {
            merged.end = merged.end.max(w.end);
            into.merge(a);
        }
        let merged = *merged;
        self.sessions.drain(first + 1..last);
        merged
    }

    pub fn sessions(&self) -> &[(Window, A)] {
        &self.sessions
    }

    pub fn into_sessions(self) -> Vec<(Window, A)> {
        self.sessions
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(ms: i64) -> EventTime {
        EventTime::from_millis_unchecked(ms)
    }

    /// The event times a session holds, in order.
    #[derive(Debug, Clone, PartialEq)]
    struct Members(Vec<i64>);

    impl crate::aggregate::Merge for Members {
        fn merge(&mut self, other: &Self) {
            self.0.extend(&other.0);
            self.0.sort_unstable();
        }
    }

    #[test]
    fn tumbling() {
        let w: Vec<_> = WindowSpec::ONE_MINUTE.assign(t(125_000)).collect();
        assert_eq!(
            w,
            [Window {
                start: t(120_000),
                end: t(180_000)
            }]
        );
        let w: Vec<_> = WindowSpec::ONE_MINUTE.assign(t(120_000)).collect();
        assert_eq!(w[0].start, t(120_000), "the start belongs to its window");
    }

    #[test]
    fn sliding() {
        let w: Vec<_> = WindowSpec::FIVE_BY_ONE_MINUTE
            .assign(t(305_000))
            .map(|w| w.start.millis())
            .collect();
        assert_eq!(w, [60_000, 120_000, 180_000, 240_000, 300_000]);
    }

    #[test]
    fn sessions_merge_when_bridged() {
        let mut s = Sessions::new(10);
        s.add(t(100));
        s.add(t(200));
        assert_eq!(s.windows().len(), 2);
        s.add(t(150)); // [150,160) does not touch [100,110) nor [200,210)
        assert_eq!(s.windows().len(), 3);
        let w = s.add(t(105)); // extends [100,110) to [100,115)
        assert_eq!((w.start, w.end), (t(100), t(115)));
        let w = s.add(t(195)); // [195,205) bridges [200,210)
        assert_eq!((w.start, w.end), (t(195), t(210)));
    }

    proptest! {
        #[test]
        fn every_window_holds_the_event_and_none_is_missed(ts in 946_684_800_000i64..4_000_000_000_000,
                                                          size in 1i64..1_000_000, slide_div in 1i64..10) {
            let slide = (size / slide_div).max(1);
            let spec = WindowSpec::Sliding { size_ms: size, slide_ms: slide };
            let windows: Vec<_> = spec.assign(t(ts)).collect();
            prop_assert!(!windows.is_empty());
            for w in &windows {
                prop_assert!(w.contains(t(ts)));
                prop_assert_eq!(w.start.millis().rem_euclid(slide), 0);
            }
            // the windows just before the first and after the last do not hold it
            let before = windows[0].start.millis() - slide;
            prop_assert!(!(before <= ts && ts < before + size));
            let after = windows[windows.len() - 1].start.millis() + slide;
            prop_assert!(after > ts);
            // tumbling: exactly one
            prop_assert_eq!(WindowSpec::Tumbling { size_ms: size }.assign(t(ts)).count(), 1);
        }

        #[test]
        fn session_aggregates_hold_exactly_their_events_in_any_order(
            times in prop::collection::vec(0i64..10_000, 1..60),
            gap in 1i64..500,
            split in 0usize..60,
        ) {
            // arrival order, and the same events in two partial batches merged (a micro-batch)
            let mut a = SessionAggs::new(gap);
            for &x in &times { a.add_event(t(x), Members(vec![x])); }
            let split = split % times.len();
            let mut b = SessionAggs::new(gap);
            let mut batch = SessionAggs::new(gap);
            for &x in &times[..split] { b.add_event(t(x), Members(vec![x])); }
            for &x in &times[split..] { batch.add_event(t(x), Members(vec![x])); }
            for (w, m) in batch.into_sessions() { b.add(w, m); }
            prop_assert_eq!(&a, &b);

            // a sweep in time order: an event at most `gap` after the previous continues its session
            let mut sorted = times.clone();
            sorted.sort_unstable();
            let mut expected: Vec<(Window, Members)> = Vec::new();
            for x in sorted {
                match expected.last_mut() {
                    Some((w, m)) if x <= w.end.millis() => {
                        w.end = t(w.end.millis().max(x + gap));
                        m.0.push(x);
                    }
                    _ => expected.push((Window { start: t(x), end: t(x + gap) }, Members(vec![x]))),
                }
            }
            prop_assert_eq!(a.sessions(), &expected[..]);
        }

        #[test]
        fn sessions_do_not_depend_on_arrival_order(mut times in prop::collection::vec(0i64..10_000, 1..60), gap in 1i64..500) {
            let mut a = Sessions::new(gap);
            for &x in &times { a.add(t(x)); }
            times.sort_unstable();
            let mut b = Sessions::new(gap);
            for &x in &times { b.add(t(x)); }
            prop_assert_eq!(a.windows(), b.windows());
            // disjoint and sorted
            for pair in a.windows().windows(2) {
                prop_assert!(pair[0].end < pair[1].start);
            }
        }
    }
}
