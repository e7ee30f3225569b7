use std::time::Duration;

use crate::{ErrorCode, EventTime, FieldError};

/// The checks that depend on the clock.
///
/// Ingest uses [`Policy::ingest`]: `ts` may be at most `max_future_skew` ahead of the server
/// clock. Consumers re-reading events that were already accepted use [`Policy::stored`], which
/// skips the clock check (the event was in range when it was accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    max_future_skew: Option<Duration>,
    now: Option<EventTime>,
}

/// The default allowed clock skew: 5 minutes.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);

impl Policy {
    pub fn ingest(max_future_skew: Duration) -> Self {
        Policy {
            max_future_skew: Some(max_future_skew),
            now: None,
        }
    }

    pub fn stored() -> Self {
        Policy {
            max_future_skew: None,
            now: None,
        }
    }

    /// Judge `ts` against a fixed "now" instead of the system clock (tests, replays).
    pub fn at(self, now: EventTime) -> Self {
        Policy {
            now: Some(now),
            ..self
        }
    }

    pub(crate) fn check_ts(&self, ts: EventTime) -> Result<(), FieldError> {
        let Some(skew) = self.max_future_skew else {
            return Ok(());
        };
        let now = self.now.unwrap_or_else(EventTime::now);
        let skew_ms = i64::try_from(skew.as_millis()).unwrap_or(i64::MAX);
        let ahead = ts.millis().saturating_sub(now.millis());
        if ahead > skew_ms {
            return Err(FieldError::new(
                "ts",
                ErrorCode::FutureTimestamp,
                format!(
                    "{ts} is {ahead} ms ahead of the server clock ({now}); at most {skew_ms} ms allowed"
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::ingest(DEFAULT_MAX_FUTURE_SKEW)
    }
}
