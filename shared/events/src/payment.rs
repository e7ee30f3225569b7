use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::fields::{RawMcc, RawTs, check_range};
use crate::{
    Amount, Country, Currency, Event, EventId, EventKind, EventTime, FieldError, Ident, Mcc, Policy,
};

/// One card payment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payment {
    pub event_id: EventId,
    pub txn_id: Ident,
    pub card_id: Ident,
    pub merchant_id: Ident,
    pub mcc: Mcc,
    pub amount: Amount,
    pub currency: Currency,
    pub country: Country,
    /// Latitude in degrees, −90 … 90.
    pub lat: f64,
    /// Longitude in degrees, −180 … 180.
    pub lon: f64,
    pub ts: EventTime,
}

impl Payment {
    /// Check the rules the field types cannot hold themselves (ranges, clock skew).
    pub fn check(&self, policy: &Policy) -> Result<(), FieldError> {
        check_range("lat", self.lat, -90.0, 90.0, "°")?;
        check_range("lon", self.lon, -180.0, 180.0, "°")?;
        policy.check_ts(self.ts)
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    txn_id: Cow<'a, str>,
    #[serde(borrow)]
    card_id: Cow<'a, str>,
    #[serde(borrow)]
    merchant_id: Cow<'a, str>,
    #[serde(borrow)]
    mcc: RawMcc<'a>,
    amount: f64,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    country: Cow<'a, str>,
    lat: f64,
    lon: f64,
    #[serde(borrow)]
    ts: RawTs<'a>,
}

impl Event for Payment {
    const KIND: EventKind = EventKind::Payment;

    fn from_json(json: &[u8], policy: &Policy) -> Result<Self, FieldError> {
        let raw: Raw = crate::decode(json)?;
        let payment = Payment {
            event_id: EventId::parse(raw.event_id)?,
            txn_id: Ident::parse("txn_id", raw.txn_id)?,
            card_id: Ident::parse("card_id", raw.card_id)?,
            merchant_id: Ident::parse("merchant_id", raw.merchant_id)?,
            mcc: raw.mcc.parse("mcc")?,
            amount: Amount::from_f64("amount", raw.amount)?,
            currency: Currency::parse("currency", &raw.currency)?,
            country: Country::parse("country", &raw.country)?,
            lat: raw.lat,
            lon: raw.lon,
            ts: raw.ts.parse("ts")?,
        };
        payment.check(policy)?;
        Ok(payment)
    }

    fn event_id(&self) -> &EventId {
        &self.event_id
    }

    fn ts(&self) -> EventTime {
        self.ts
    }

    fn key(&self) -> &str {
        self.card_id.as_str()
    }
}
