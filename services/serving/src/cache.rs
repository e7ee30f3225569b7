//! What keeps Postgres out of most requests without changing what an answer says.
//!
//! - [`LatestRun`]: the latest `batch_runs` row (version, cutoff), read again once it is older
//!   than `LAMBDALAKE_SERVING_VERSION_TTL` (default 250 ms). An answer may use the previous
//!   version for that long after a publication: it is still one whole version merged on its own
//!   cutoff (the speed views cover what follows it), so it is exact, only older.
//! - [`WindowCache`]: the batch windows of one key over one range in one version. A published
//!   version never changes, so a cached answer is the answer; it is keyed by (version, its
//!   publication time, key, first window start, end of the batch part = min(`to`, cutoff)), bounded by the number of windows
//!   held (`LAMBDALAKE_SERVING_CACHE_WINDOWS`, default 200,000, 0 = off): entries of older
//!   versions go first, then arbitrary ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stores::{Postgres, StoreError};

/// The latest batch run; `None`: none published (or no batch tables).
pub type Run = Option<LatestVersion>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestVersion {
    pub version: i64,
    /// Event-time cutoff, epoch ms (`None`: the version holds no data).
    pub cutoff: Option<i64>,
    /// When it was published, epoch µs: with the version, it names the version's content even
    /// across a database that was reset (version numbers start over).
    pub published_us: i64,
}

pub struct LatestRun {
    ttl: Duration,
    slot: Mutex<Option<(Instant, Run)>>,
}

impl LatestRun {
    pub fn new(ttl: Duration) -> Self {
        LatestRun {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The cached run when younger than the TTL, else read now.
    pub async fn get(&self, pg: &Postgres) -> Result<Run, StoreError> {
        if let Some((at, run)) = *self.slot.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < self.ttl
        {
            return Ok(run);
        }
        self.read(pg).await
    }

    /// Read now (and cache): a reader whose version disappeared asks for the current one.
    pub async fn read(&self, pg: &Postgres) -> Result<Run, StoreError> {
        let run = crate::windows::latest_run(pg).await?;
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), run));
        Ok(run)
    }
}

/// (version, publication time, key, first window start, end of the batch part).
type Key = (i64, i64, String, i64, i64);

pub struct WindowCache<W> {
    capacity: usize,
    inner: Mutex<Inner<W>>,
}

struct Inner<W> {
    map: HashMap<Key, Arc<Vec<W>>>,
    /// Windows held over all entries.
    held: usize,
}

impl<W> WindowCache<W> {
    pub fn new(capacity: usize) -> Self {
        WindowCache {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                held: 0,
            }),
        }
    }

    pub fn get(&self, v: &LatestVersion, key: &str, from: i64, to: i64) -> Option<Arc<Vec<W>>> {
        if self.capacity == 0 {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (v.version, v.published_us, key.to_owned(), from, to);
        inner.map.get(&k).cloned()
    }

    pub fn put(&self, v: &LatestVersion, key: &str, from: i64, to: i64, windows: Arc<Vec<W>>) {
        // an empty answer still costs an entry
        let cost = windows.len().max(1);
        if cost > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.held + cost > self.capacity {
            // make room for a quarter of the capacity at once: other versions first, then any
            let target = (self.capacity - cost).saturating_sub(self.capacity / 4);
            let Inner { map, held } = &mut *inner;
            let current = (v.version, v.published_us);
            map.retain(|k, w| {
                if *held > target && (k.0, k.1) != current {
                    *held -= w.len().max(1);
                    false
                } else {
                    true
                }
            });
            map.retain(|_, w| {
                if *held > target {
                    *held -= w.len().max(1);
                    false
                } else {
                    true
                }
            });
        }
        let k = (v.version, v.published_us, key.to_owned(), from, to);
        if let Some(old) = inner.map.insert(k, windows) {
            inner.held -= old.len().max(1);
        }
        inner.held += cost;
    }

    /// Windows held (for the tests).
    pub fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i64) -> LatestVersion {
        LatestVersion {
            version,
            cutoff: Some(0),
            published_us: version * 10,
        }
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_evicts_older_versions_first() {
        let c: WindowCache<u8> = WindowCache::new(100);
        c.put(&v(1), "a", 0, 10, Arc::new(vec![0; 40]));
        c.put(&v(2), "b", 0, 10, Arc::new(vec![0; 40]));
        assert_eq!(c.held(), 80);
        c.put(&v(2), "c", 0, 10, Arc::new(vec![0; 40]));
        assert!(c.held() <= 100);
        assert!(
            c.get(&v(1), "a", 0, 10).is_none(),
            "the other version went first"
        );
        assert_eq!(c.get(&v(2), "c", 0, 10).map(|v| v.len()), Some(40));
        // replacing an entry does not count it twice; empty answers cost one
        c.put(&v(2), "c", 0, 10, Arc::new(vec![0; 10]));
        c.put(&v(2), "d", 0, 10, Arc::new(Vec::new()));
        assert_eq!(c.get(&v(2), "d", 0, 10).map(|v| v.len()), Some(0));
        let held = c.held();
        assert!((11..=100).contains(&held), "{held}");
        // too large for the cache: not kept
        c.put(&v(3), "e", 0, 10, Arc::new(vec![0; 101]));
        assert!(c.get(&v(3), "e", 0, 10).is_none());
        // distinct ranges are distinct entries, and so are versions published at another time
        assert!(c.get(&v(2), "c", 0, 11).is_none());
        let republished = LatestVersion {
            published_us: 1,
            ..v(2)
        };
        assert!(c.get(&republished, "c", 0, 10).is_none());
        // off
        let off: WindowCache<u8> = WindowCache::new(0);
        off.put(&v(1), "a", 0, 1, Arc::new(Vec::new()));
        assert!(off.get(&v(1), "a", 0, 1).is_none());
    }
}
