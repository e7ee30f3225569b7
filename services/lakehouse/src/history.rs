//! The fraud scorer's memory of each card's earlier payments.
//!
//! A payment's features (`lambdalake_views::fraud`) need the card's payments that silver holds
//! before it — same Kafka partition, lower offset, within [`HISTORY_MS`] of event time: how many in
//! the last [`RECENT_MS`] and the newest one (for the travel speed). Reading them from silver for
//! every micro-batch scans the whole last day of `silver_payments`, since a batch's cards are
//! spread over every file; that cost grew with the table until it was half of each micro-batch.
//!
//! So the pipeline keeps, per (card, partition), what silver holds that can still matter, and adds
//! each payment silver takes. The memory is rebuilt from silver, never trusted beyond it:
//! - after a start, an assignment or a failed micro-batch it is empty; the first scoring streams
//!   the owned partitions' payments of the last [`HISTORY_MS`] from silver (one scan, bounded
//!   memory: each card is pruned as its rows arrive) and from then on knows every card;
//! - per card it holds every payment within [`KEEP_MS`] of the card's newest one, and the newest
//!   one before that: exact for any payment at most `KEEP_MS - RECENT_MS` older than the card's
//!   newest payment;
//! - a payment later than that, or older than what the last load covered, is answered by reading
//!   that card from silver, as before;
//! - a card silent for [`HISTORY_MS`] is forgotten (nothing it paid can matter to a newer payment).
//!
//! The answer is the same as reading silver: [`tests`] compares the two on random streams with
//! late and out-of-order payments.

use std::collections::HashMap;

use lambdalake_views::fraud::{RECENT_MS, Seen};

/// The card history a payment's fraud features see: the card's earlier payments (by offset in
/// its partition) within this much event time before it. Enough for every feature: recent
/// payments reach back 10 minutes, and a previous payment more than a day before cannot imply
/// an impossible speed (half the Earth's circumference in 24 h is under 900 km/h).
pub const HISTORY_MS: i64 = 24 * 3_600_000;

/// Payments held per card: those within this of the card's newest one (and the newest before).
pub const KEEP_MS: i64 = RECENT_MS + 5 * 60_000;

/// One card's payments in one partition.
#[derive(Debug, Clone)]
struct Past {
    /// Every payment of the card in silver with `ts >= floor` is in `items` or `before`.
    floor: i64,
    /// `items` holds every payment with `ts >= from`...
    from: i64,
    /// ... and this is the newest (by event time, then offset) with `floor <= ts < from`.
    before: Option<(i64, Seen)>,
    /// (offset, payment), in no particular order.
    items: Vec<(i64, Seen)>,
    /// The offset after the highest one added (a payment below it is held already).
    through: i64,
    /// The newest event time held.
    newest: i64,
}

impl Past {
    fn new(floor: i64) -> Self {
        Past {
            floor,
            from: floor,
            before: None,
            items: Vec::new(),
            through: 0,
            newest: i64::MIN,
        }
    }

    fn add(&mut self, offset: i64, seen: Seen) {
        if seen.ts_ms < self.floor {
            return;
        }
        self.through = self.through.max(offset + 1);
        self.newest = self.newest.max(seen.ts_ms);
        if seen.ts_ms < self.from {
            if self.before.is_none_or(|b| newer((offset, seen), b)) {
                self.before = Some((offset, seen));
            }
        } else {
            self.items.push((offset, seen));
        }
    }

    /// Move what is more than [`KEEP_MS`] older than the newest payment into `before`.
    fn prune(&mut self) {
        let from = self.newest.saturating_sub(KEEP_MS);
        if from <= self.from {
            return;
        }
        self.from = from;
        let mut before = self.before;
        self.items.retain(|&(o, s)| {
            if s.ts_ms >= from {
                return true;
            }
            if before.is_none_or(|b| newer((o, s), b)) {
                before = Some((o, s));
            }
            false
        });
        self.before = before;
    }

    /// Whether the payments before (`offset`, `ts`) that count are all here.
    fn knows(&self, ts: i64) -> bool {
        ts.saturating_sub(RECENT_MS) >= self.from && ts.saturating_sub(HISTORY_MS) >= self.floor
    }
}

/// `a` is newer than `b`: by event time, then by offset.
fn newer(a: (i64, Seen), b: (i64, Seen)) -> bool {
    (a.1.ts_ms, a.0) > (b.1.ts_ms, b.0)
}

/// The cards' histories of the partitions this instance owns.
#[derive(Debug, Default)]
pub struct CardHistory {
    cards: HashMap<(String, i32), Past>,
    /// Set by a full load: every payment of the owned partitions in silver with a later event
    /// time is held (or was forgotten: see `forgotten`).
    floor: Option<i64>,
    /// Cards were forgotten whose newest payment was at most this.
    forgotten: i64,
    /// The newest event time added.
    newest: i64,
}

impl CardHistory {
    /// Forget everything (a start, an assignment, a failed micro-batch).
    pub fn clear(&mut self) {
        *self = CardHistory::default();
    }

    /// Whether a full load was made since the last [`clear`](Self::clear).
    pub fn loaded(&self) -> bool {
        self.floor.is_some()
    }

    /// Cards held (over every partition).
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// Start a full load: the rows that follow are every payment of the owned partitions in silver
    /// with an event time of at least `floor`, in any order.
    pub fn begin_load(&mut self, floor: i64) {
        self.clear();
        self.floor = Some(floor);
        self.forgotten = i64::MIN;
    }

    /// One row of a full load: added, and the card pruned now and then so that a long load holds
    /// no more than the pruned histories.
    pub fn load(&mut self, card: &str, partition: i32, offset: i64, seen: Seen) {
        let floor = self.floor.unwrap_or(i64::MIN);
        let past = self
            .cards
            .entry((card.to_owned(), partition))
            .or_insert_with(|| Past::new(floor));
        past.add(offset, seen);
        if past.items.len() >= 64 {
            past.prune();
        }
        self.newest = self.newest.max(seen.ts_ms);
    }

    /// Replace what is held of (`card`, `partition`) by a read of silver: `rows` are every payment
    /// of it with an event time of at least `floor`. Not pruned before the next
    /// [`compact`](Self::compact), so that every payment of the micro-batch is known.
    pub fn load_card(
        &mut self,
        card: &str,
        partition: i32,
        floor: i64,
        rows: impl IntoIterator<Item = (i64, Seen)>,
    ) {
        let mut past = Past::new(floor);
        for (o, s) in rows {
            past.add(o, s);
            self.newest = self.newest.max(s.ts_ms);
        }
        self.cards.insert((card.to_owned(), partition), past);
    }

    /// Whether the history of the payment of `card` at (`partition`, `offset`), at `ts`, is known
    /// without reading silver.
    pub fn knows(&self, card: &str, partition: i32, offset: i64, ts: i64) -> bool {
        match self.cards.get(&(card.to_owned(), partition)) {
            // and the newest payment below `from` is not one at or after `offset` (a load read this
            // batch's payments from silver): the newest before `offset` may have been pruned
            Some(p) => p.knows(ts) && p.before.is_none_or(|(o, _)| o < offset),
            None => self.floor.is_some_and(|f| {
                let since = ts.saturating_sub(HISTORY_MS);
                since >= f && since > self.forgotten
            }),
        }
    }

    /// The payments of `card` in `partition` before `offset` that count for one at `ts`: within
    /// [`HISTORY_MS`] before it, or after it in event time (the features ignore those), oldest
    /// first. `None`: not known (see [`knows`](Self::knows)).
    pub fn before(&self, card: &str, partition: i32, offset: i64, ts: i64) -> Option<Vec<Seen>> {
        if !self.knows(card, partition, offset, ts) {
            return None;
        }
        let Some(p) = self.cards.get(&(card.to_owned(), partition)) else {
            return Some(Vec::new());
        };
        let mut items: Vec<(i64, Seen)> = p
            .before
            .iter()
            .chain(p.items.iter())
            .filter(|(o, s)| *o < offset && s.ts_ms >= ts - HISTORY_MS)
            .copied()
            .collect();
        // oldest first, so that among payments at the same instant the last one is the newest
        items.sort_by_key(|(o, s)| (s.ts_ms, *o));
        Some(items.into_iter().map(|(_, s)| s).collect())
    }

    /// A payment silver took: held from now on (once, whatever the number of calls).
    pub fn add(&mut self, card: &str, partition: i32, offset: i64, seen: Seen) {
        self.newest = self.newest.max(seen.ts_ms);
        let key = (card.to_owned(), partition);
        if let Some(p) = self.cards.get_mut(&key) {
            if offset >= p.through {
                p.add(offset, seen);
            }
            return;
        }
        // a card not held is known to have no payment since the load (or since it was forgotten)
        if let Some(floor) = self.floor {
            let mut p = Past::new(floor.max(self.forgotten.saturating_add(1)));
            p.add(offset, seen);
            self.cards.insert(key, p);
        }
    }

    /// Prune every card, and forget the cards whose newest payment is more than [`HISTORY_MS`]
    /// older than the newest payment added (none of theirs can count for a newer payment).
    pub fn compact(&mut self) {
        let horizon = self.newest.saturating_sub(HISTORY_MS);
        let mut forgotten = self.forgotten;
        self.cards.retain(|_, p| {
            p.prune();
            if p.newest < horizon {
                forgotten = forgotten.max(p.newest);
                false
            } else {
                true
            }
        });
        self.forgotten = forgotten;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (splitmix64): the streams are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `r` (start inclusive, end exclusive).
        fn random_range(&mut self, r: std::ops::Range<i64>) -> i64 {
            r.start + (self.next() % (r.end - r.start) as u64) as i64
        }
    }

    /// What a read of silver gives: the payments before `offset` within `HISTORY_MS` of `ts`.
    fn truth(all: &[(i64, Seen)], offset: i64, ts: i64) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = all
            .iter()
            .filter(|(o, s)| *o < offset && s.ts_ms >= ts - HISTORY_MS)
            .map(|(o, s)| (s.ts_ms, *o))
            .collect();
        v.sort();
        v
    }

    /// What the features read of a history: the count in the last RECENT_MS and the newest.
    fn summary(history: &[Seen], ts: i64) -> (usize, Option<(i64, u64, u64)>) {
        let earlier: Vec<&Seen> = history.iter().filter(|s| s.ts_ms <= ts).collect();
        let recent = earlier.iter().filter(|s| s.ts_ms > ts - RECENT_MS).count();
        let newest = earlier
            .iter()
            .max_by_key(|s| s.ts_ms)
            .map(|s| (s.ts_ms, s.lat.to_bits(), s.lon.to_bits()));
        (recent, newest)
    }

    fn seen(ts: i64, o: i64) -> Seen {
        Seen {
            ts_ms: ts,
            lat: o as f64,
            lon: -(o as f64),
        }
    }

    /// Random streams of a few cards (in order, out of order, late by minutes to days) in
    /// micro-batches, as the pipeline runs them: silver takes a batch, the memory is loaded in full
    /// at a random batch (reading that batch's payments too), then each payment is scored in
    /// offset order and added, and the memory compacted after the batch. Every payment's history
    /// summary equals the one read from "silver", or the memory says it does not know (and the
    /// per-card read then makes it know).
    #[test]
    fn the_memory_answers_as_silver_does() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed);
            let cards = ["a", "b", "c", "d"];
            let mut silver: Vec<(&str, i64, Seen)> = Vec::new();
            let mut h = CardHistory::default();
            let mut clock: i64 = 1_000_000_000_000;
            let load_at = rng.random_range(0..20);
            let (mut unknown, mut offset, mut scored) = (0, 0i64, 0);
            for batch in 0..40 {
                let mut payments = Vec::new();
                for _ in 0..rng.random_range(1..40) {
                    clock += rng.random_range(0..60_000);
                    let ts = match rng.random_range(0..100) {
                        0..=79 => clock,
                        80..=89 => clock - rng.random_range(0..KEEP_MS),
                        90..=97 => clock - rng.random_range(0..3_600_000),
                        _ => clock - rng.random_range(0..2 * HISTORY_MS),
                    };
                    let card = cards[rng.random_range(0..cards.len() as i64) as usize];
                    payments.push((card, offset, seen(ts, offset)));
                    offset += 1;
                }
                // silver takes the batch before it is scored
                silver.extend(payments.iter().copied());
                if batch == load_at {
                    let floor = payments.iter().map(|p| p.2.ts_ms).min().unwrap() - HISTORY_MS;
                    h.begin_load(floor);
                    for (c, o, s) in &silver {
                        if s.ts_ms >= floor {
                            h.load(c, 0, *o, *s);
                        }
                    }
                }
                for &(card, o, s) in &payments {
                    let ts = s.ts_ms;
                    let rows: Vec<(i64, Seen)> = silver
                        .iter()
                        .filter(|(c, _, _)| *c == card)
                        .map(|(_, o, s)| (*o, *s))
                        .collect();
                    let expected: Vec<Seen> = truth(&rows, o, ts)
                        .iter()
                        .map(|(t, o)| seen(*t, *o))
                        .collect();
                    let got = match h.before(card, 0, o, ts) {
                        Some(g) => g,
                        None => {
                            unknown += usize::from(batch >= load_at);
                            let floor = ts - HISTORY_MS;
                            h.load_card(
                                card,
                                0,
                                floor,
                                rows.iter().copied().filter(|(_, s)| s.ts_ms >= floor),
                            );
                            h.before(card, 0, o, ts)
                                .expect("known after a read of the card")
                        }
                    };
                    assert_eq!(
                        summary(&got, ts),
                        summary(&expected, ts),
                        "seed {seed} offset {o} card {card} ts {ts}"
                    );
                    h.add(card, 0, o, s);
                    scored += usize::from(batch >= load_at);
                }
                h.compact();
            }
            // once loaded, most answers come from memory
            assert!(
                unknown * 3 < scored,
                "seed {seed}: {unknown} of {scored} read silver"
            );
        }
    }

    /// A full load made during a micro-batch reads the batch's own payments from silver. Here the
    /// load prunes the card (64 rows) and a late payment of the batch, loaded after, becomes the
    /// newest one below the held range: it must not stand for the payments before it.
    #[test]
    fn a_load_that_reads_the_batch_itself_never_answers_with_a_later_payment() {
        let t0 = 1_000_000_000_000;
        let min = 60_000;
        let mut rows: Vec<(i64, Seen)> = (0..62).map(|o| (o, seen(t0 + o * 1000, o))).collect();
        // the batch: P (offset 62), the card's newest payment (63), a late one (64)
        let p = (62, seen(t0 + 56 * min, 62));
        rows.push(p);
        rows.push((63, seen(t0 + 60 * min, 63)));
        rows.push((64, seen(t0 + 62_000, 64)));
        let floor = p.1.ts_ms - HISTORY_MS;
        let mut h = CardHistory::default();
        h.begin_load(floor);
        for (o, s) in &rows {
            h.load("a", 0, *o, *s);
        }
        assert!(
            !h.knows("a", 0, p.0, p.1.ts_ms),
            "the newest payment below the held range is the batch's late one, after P"
        );
        h.load_card("a", 0, floor, rows.iter().copied());
        let got = h
            .before("a", 0, p.0, p.1.ts_ms)
            .expect("known after the read");
        let expected: Vec<Seen> = truth(&rows, p.0, p.1.ts_ms)
            .iter()
            .map(|(t, o)| seen(*t, *o))
            .collect();
        assert_eq!(summary(&got, p.1.ts_ms), summary(&expected, p.1.ts_ms));
        assert_eq!(summary(&got, p.1.ts_ms).1.map(|n| n.0), Some(t0 + 61_000));
    }

    #[test]
    fn a_card_silent_for_a_day_is_forgotten_and_still_answered() {
        let mut h = CardHistory::default();
        let t0 = 1_000_000_000_000;
        h.begin_load(t0 - HISTORY_MS);
        h.add("old", 0, 0, seen(t0, 0));
        h.add("new", 0, 1, seen(t0 + HISTORY_MS + 60_000, 1));
        h.compact();
        assert_eq!(h.len(), 1, "the silent card is forgotten");
        // a newer payment of it has no history that counts: known, empty
        assert_eq!(
            h.before("old", 0, 2, t0 + HISTORY_MS + 120_000),
            Some(Vec::new())
        );
        // a late one within a day of its last payment is not known: silver is read
        assert_eq!(h.before("old", 0, 3, t0 + 60_000), None);
    }
}
