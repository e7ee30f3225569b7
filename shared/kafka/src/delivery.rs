//! The course's three delivery semantics, as a switch the consumers of the speed layer and the
//! lakehouse accept. Only `exactly-once` is safe; the other two exist to be measured against it
//! (the fault suite kills the services under each and counts what was lost and doubled).

/// When a consumer's progress is recorded, relative to its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Delivery {
    /// Commit the group's offsets to Kafka before applying a micro-batch: a crash between the
    /// two skips the batch (lost), never repeats it.
    AtMostOnce,
    /// Apply a micro-batch, then commit the group's offsets to Kafka separately: a crash between
    /// the two reads the batch again (repeated), never skips it.
    AtLeastOnce,
    /// Store each partition's offset in the same atomic write as the results and start from it:
    /// neither skipped nor repeated (the default).
    #[default]
    ExactlyOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtMostOnce => "at-most-once",
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }

    /// Whether positions come from the offsets stored with the results (else from the group's
    /// offsets committed to Kafka).
    pub fn fenced(self) -> bool {
        self == Delivery::ExactlyOnce
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a partition's first record after an assignment compares with the offset stored with the
/// results: the records skipped (at-most-once after a crash) or read again (at-least-once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Continues,
    Skipped(i64),
    Repeated(i64),
}

impl Resume {
    /// `stored`: the offset stored with the results (none: nothing applied yet, 0);
    /// `first`: the offset of the first record read after the assignment.
    pub fn of(stored: Option<i64>, first: i64) -> Resume {
        let stored = stored.unwrap_or(0);
        match first.cmp(&stored) {
            std::cmp::Ordering::Equal => Resume::Continues,
            std::cmp::Ordering::Greater => Resume::Skipped(first - stored),
            std::cmp::Ordering::Less => Resume::Repeated(stored - first),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn names_and_default() {
        assert_eq!(Delivery::default(), Delivery::ExactlyOnce);
        for d in [
            Delivery::AtMostOnce,
            Delivery::AtLeastOnce,
            Delivery::ExactlyOnce,
        ] {
            assert_eq!(Delivery::from_str(d.as_str(), false), Ok(d));
        }
        assert!(Delivery::ExactlyOnce.fenced());
        assert!(!Delivery::AtLeastOnce.fenced());
    }

    #[test]
    fn resume_counts_what_was_skipped_or_repeated() {
        assert_eq!(Resume::of(Some(10), 10), Resume::Continues);
        assert_eq!(Resume::of(Some(10), 14), Resume::Skipped(4));
        assert_eq!(Resume::of(Some(10), 7), Resume::Repeated(3));
        assert_eq!(Resume::of(None, 0), Resume::Continues);
        // a retention gap before anything was stored reads as skipped: it was
        assert_eq!(Resume::of(None, 5), Resume::Skipped(5));
    }
}
