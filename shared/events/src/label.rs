use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::fields::RawTs;
use crate::{EventId, EventTime, FieldError, Ident, Policy};

/// The verdict on a payment, known later (a chargeback, an analyst's review): the labels the batch
/// layer trains the fraud model on. Keyed by `card_id` on the `fraud-labels` topic.
///
/// ```json
/// {"event_id": "l-1", "txn_id": "t-42", "card_id": "c-7", "fraud": true, "ts": 1764000000000}
/// ```
/// `txn_id` names the labelled payment; `ts` is when the verdict was given. A later label for the
/// same `txn_id` replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FraudLabel {
    pub event_id: EventId,
    pub txn_id: Ident,
    pub card_id: Ident,
    pub fraud: bool,
    pub ts: EventTime,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    txn_id: Cow<'a, str>,
    #[serde(borrow)]
    card_id: Cow<'a, str>,
    fraud: bool,
    #[serde(borrow)]
    ts: RawTs<'a>,
}

impl FraudLabel {
    pub fn from_json(json: &[u8], policy: &Policy) -> Result<Self, FieldError> {
        let raw: Raw = crate::decode(json)?;
        let label = FraudLabel {
            event_id: EventId::parse(raw.event_id)?,
            txn_id: Ident::parse("txn_id", raw.txn_id)?,
            card_id: Ident::parse("card_id", raw.card_id)?,
            fraud: raw.fraud,
            ts: raw.ts.parse("ts")?,
        };
        policy.check_ts(label.ts)?;
        Ok(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_decodes_and_a_bad_one_names_its_field() {
        let l = FraudLabel::from_json(
            br#"{"event_id":"l1","txn_id":"t1","card_id":"c1","fraud":true,"ts":1764000000000}"#,
            &Policy::stored(),
        )
        .unwrap();
        assert!(l.fraud);
        assert_eq!(l.txn_id.as_str(), "t1");
        let e = FraudLabel::from_json(
            br#"{"event_id":"l1","txn_id":"t1","card_id":"c1","fraud":"yes","ts":1}"#,
            &Policy::stored(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("fraud"), "{e}");
    }
}
