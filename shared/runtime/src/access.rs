//! Who may call an HTTP API, and how often: API keys (`Authorization: Bearer <key>`) and a
//! token-bucket rate limit per key (per client address when no key is configured). Keys are
//! [`Secret`]s: never printed, never a metric label (a key is named by its position, `key-1`…).
//!
//! Without keys an API is open, which is only the default on a loopback address: a service
//! listening elsewhere without keys refuses to start unless anonymous access is asked for
//! ([`check`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header;

/// A secret string: `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// For clap: keys are trimmed (`"k1, k2"` in the environment means `k1` and `k2`); an empty
/// key is refused.
pub fn parse_api_key(s: &str) -> Result<Secret, String> {
    let key = s.trim();
    if key.is_empty() {
        return Err("an API key is empty".to_owned());
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an API key contains whitespace or control characters".to_owned());
    }
    Ok(Secret::new(key))
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401, with what was wrong.
    Unauthorized(&'static str),
    /// 429: the caller's bucket is empty; a token comes back after `retry_after`.
    RateLimited { retry_after: Duration },
}

/// Who a caller is, for the rate limit: a key's position, or the client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    Key(usize),
    Addr(IpAddr),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per caller: `rate` requests per second, bursts of `burst`.
struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Caller, Bucket>>,
}

/// Callers remembered at most (client addresses are unbounded): full buckets are forgotten
/// first, since forgetting them changes nothing.
const MAX_CALLERS: usize = 100_000;

impl Limiter {
    fn take(&self, caller: Caller, now: Instant) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(&caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_CALLERS {
                // every remembered caller is busy: refuse the newcomer rather than grow
                return Err(Duration::from_secs(1));
            }
        }
        let b = buckets.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// The access rules of one API.
pub struct Access {
    keys: Vec<Secret>,
    limiter: Option<Limiter>,
}

impl Access {
    /// `rate`: requests per second per caller (0: no limit); `burst`: how many may come at once.
    pub fn new(keys: Vec<Secret>, rate: f64, burst: u32) -> Access {
        Access {
            keys,
            limiter: (rate > 0.0).then(|| Limiter {
                rate,
                burst: f64::from(burst.max(1)),
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn keys_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// `Ok` when the request carries a valid key (or none is configured) and its caller has a
    /// token left. Returns the caller's name for logs and metrics (`key-N` or `anonymous`).
    pub fn check(&self, req: &HttpRequest) -> Result<String, Denied> {
        self.check_at(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            req.peer_addr(),
            Instant::now(),
        )
    }

    fn check_at(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Result<String, Denied> {
        let caller = if self.keys.is_empty() {
            match peer {
                Some(a) => Caller::Addr(a.ip()),
                None => Caller::Addr(IpAddr::from([0, 0, 0, 0])),
            }
        } else {
            Caller::Key(self.key_of(authorization)?)
        };
        if let Some(l) = &self.limiter {
            l.take(caller.clone(), now)
                .map_err(|retry_after| Denied::RateLimited { retry_after })?;
        }
        Ok(match caller {
            Caller::Key(i) => format!("key-{}", i + 1),
            Caller::Addr(_) => "anonymous".to_owned(),
        })
    }

    fn key_of(&self, authorization: Option<&[u8]>) -> Result<usize, Denied> {
        let Some(value) = authorization else {
            return Err(Denied::Unauthorized(
                "missing Authorization header; expected `Authorization: Bearer <api key>`",
            ));
        };
        // the scheme is case-insensitive (RFC 7235)
        let Some(token) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return Err(Denied::Unauthorized(
                "malformed Authorization header; expected `Authorization: Bearer <api key>`",
            ));
        };
        // compare against every key, in time independent of where the bytes differ
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if constant_time_eq(token.as_bytes(), key.expose().as_bytes()) && found.is_none() {
                found = Some(i);
            }
        }
        found.ok_or(Denied::Unauthorized("invalid API key"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The access settings of one service's API, as configured (`prefix`: its environment
/// variables' prefix, `LAMBDALAKE_INGEST`).
pub struct Settings<'a> {
    pub prefix: &'a str,
    pub listen: SocketAddr,
    pub keys: &'a [Secret],
    pub allow_anonymous: bool,
    pub rate_limit: f64,
}

/// What is wrong with `s`, every problem: a service listening beyond loopback without keys is
/// open to its network (refused unless the operator allowed anonymous access), and the rate
/// limit must be a number of requests per second.
pub fn check(s: &Settings<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    if s.keys.is_empty() && !s.listen.ip().is_loopback() && !s.allow_anonymous {
        problems.push(format!(
            "listening on {} without API keys would let anyone on the network in: set {p}_API_KEYS (comma-separated keys), listen on a loopback address, or allow anonymous access explicitly ({p}_ALLOW_ANONYMOUS=true)",
            s.listen,
            p = s.prefix
        ));
    }
    if !(s.rate_limit.is_finite() && s.rate_limit >= 0.0) {
        problems.push(format!(
            "{}_RATE_LIMIT must be a number of requests per second ≥ 0, got {}",
            s.prefix, s.rate_limit
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(k: &str) -> Vec<u8> {
        format!("Bearer {k}").into_bytes()
    }

    #[test]
    fn keys_are_checked_and_named_by_position() {
        let a = Access::new(vec![Secret::new("k1"), Secret::new("k2")], 0.0, 0);
        let now = Instant::now();
        assert_eq!(
            a.check_at(Some(&bearer("k2")), None, now),
            Ok("key-2".into())
        );
        assert_eq!(
            a.check_at(Some(b"bearer  k1 "), None, now),
            Ok("key-1".into())
        );
        assert!(
            matches!(a.check_at(None, None, now), Err(Denied::Unauthorized(m)) if m.starts_with("missing"))
        );
        assert!(
            matches!(a.check_at(Some(b"Basic k1"), None, now), Err(Denied::Unauthorized(m)) if m.starts_with("malformed"))
        );
        assert!(matches!(
            a.check_at(Some(&bearer("k3")), None, now),
            Err(Denied::Unauthorized("invalid API key"))
        ));
        assert!(matches!(
            a.check_at(Some(b"Bearer \xff"), None, now),
            Err(Denied::Unauthorized(_))
        ));
        // no key: open
        let open = Access::new(Vec::new(), 0.0, 0);
        assert_eq!(open.check_at(None, None, now), Ok("anonymous".into()));
    }

    #[test]
    fn each_key_has_its_own_bucket_refilled_at_the_rate() {
        let a = Access::new(vec![Secret::new("k1"), Secret::new("k2")], 10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.check_at(Some(&bearer("k1")), None, t0).is_ok());
        }
        let Err(Denied::RateLimited { retry_after }) = a.check_at(Some(&bearer("k1")), None, t0)
        else {
            panic!("the fourth request in the same instant is limited");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
        // another key is not affected
        assert!(a.check_at(Some(&bearer("k2")), None, t0).is_ok());
        // 100 ms later, one token is back (10/s), not two
        let t1 = t0 + Duration::from_millis(100);
        assert!(a.check_at(Some(&bearer("k1")), None, t1).is_ok());
        assert!(a.check_at(Some(&bearer("k1")), None, t1).is_err());
        // a wrong key is refused before it costs anyone a token
        assert!(matches!(
            a.check_at(Some(&bearer("x")), None, t1),
            Err(Denied::Unauthorized(_))
        ));
    }

    #[test]
    fn without_keys_each_client_address_has_a_bucket() {
        let a = Access::new(Vec::new(), 1.0, 1);
        let t0 = Instant::now();
        let p1: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let p2: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert!(a.check_at(None, Some(p1), t0).is_ok());
        assert!(a.check_at(None, Some(p1), t0).is_err());
        assert!(a.check_at(None, Some(p2), t0).is_ok());
    }

    #[test]
    fn exposure_without_keys_is_refused_beyond_loopback() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let key = [Secret::new("k")];
        let at = |listen, keys: &[Secret], allow_anonymous, rate_limit| {
            check(&Settings {
                prefix: "LAMBDALAKE_X",
                listen,
                keys,
                allow_anonymous,
                rate_limit,
            })
        };
        assert!(at(local, &[], false, 0.0).is_empty());
        let e = at(any, &[], false, 0.0);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("set LAMBDALAKE_X_API_KEYS"), "{e:?}");
        assert!(e[0].contains("LAMBDALAKE_X_ALLOW_ANONYMOUS=true"), "{e:?}");
        assert!(at(any, &[], true, 0.0).is_empty());
        assert!(at(any, &key, false, 0.0).is_empty());
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            let e = at(local, &[], false, bad);
            assert!(e[0].starts_with("LAMBDALAKE_X_RATE_LIMIT"), "{e:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
