//! Workloads for the tests and the benchmark (the load generator has its own).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Payments of `cards` cards with habits (home country, everyday categories, amounts around a
/// card's mean), a few of them frauds (a new country, a risky category, a large amount, or a
/// burst of card testing), event times distinct per card; and a label for every fraud plus a
/// few "not fraud" verdicts (one reversed fraud among them).
pub fn fraud_history(seed: u64, cards: usize, per_card: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = 1_764_025_200_000i64;
    let homes = [
        ("FR", 48.85, 2.35),
        ("DE", 52.52, 13.40),
        ("ES", 40.42, -3.70),
    ];
    let (mut payments, mut labels) = (Vec::new(), Vec::new());
    let mut n = 0;
    for c in 0..cards {
        let (home, lat, lon) = homes[c % homes.len()];
        let mean = rng.random_range(2_000..20_000);
        let mut ts = t0 + rng.random_range(0..3_600_000);
        for _ in 0..per_card {
            ts += rng.random_range(20 * 60_000..8 * 3_600_000);
            let fraud = rng.random_range(0..100) < 4;
            let (country, plat, plon, mcc, cents, burst) = if fraud {
                match rng.random_range(0..3) {
                    0 => ("BR", -23.55, -46.63, 6051, mean * 12, 1),
                    1 => (home, lat, lon, 7995, mean * 8, 1),
                    _ => (home, lat, lon, 5816, 100, 6),
                }
            } else {
                let mcc = [5411, 5812, 5541, 4111][rng.random_range(0..4)];
                let cents = (mean + rng.random_range(-mean / 3..mean / 3)).max(50);
                (home, lat, lon, mcc, cents, 1)
            };
            for b in 0..burst {
                let at = ts + b * 20_000;
                n += 1;
                payments.push(format!(
                    r#"{{"event_id":"p{n}","txn_id":"t{n}","card_id":"c{c}","merchant_id":"m{}","mcc":"{mcc}","amount":{}.{:02},"currency":"EUR","country":"{country}","lat":{plat},"lon":{plon},"ts":{at}}}"#,
                    rng.random_range(0..50), cents / 100, cents % 100
                ).into_bytes());
                let verdict = if fraud {
                    Some(true)
                } else if rng.random_range(0..50) == 0 {
                    Some(false)
                } else {
                    None
                };
                if let Some(v) = verdict {
                    labels.push(format!(
                        r#"{{"event_id":"l{n}","txn_id":"t{n}","card_id":"c{c}","fraud":{v},"ts":{}}}"#,
                        at + 86_400_000
                    ).into_bytes());
                }
            }
            ts += burst * 20_000;
        }
    }
    (payments, labels)
}
