//! Validated field types. Each constructor checks one rule and names the field in its error, so
//! an instance of these types is always valid.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::codes::{COUNTRIES, CURRENCIES};
use crate::{ErrorCode, FieldError};

/// Longest identifier accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

fn check_ident(field: &str, s: &str) -> Result<(), FieldError> {
    // fast path: printable ASCII, no edge space
    let b = s.as_bytes();
    if !b.is_empty()
        && b.len() <= MAX_ID_CHARS
        && b.iter().all(|c| (0x20..0x7f).contains(c))
        && b[0] != b' '
        && b[b.len() - 1] != b' '
    {
        return Ok(());
    }
    let invalid = |reason: String| Err(FieldError::new(field, ErrorCode::InvalidValue, reason));
    let chars = s.chars().count();
    if chars == 0 {
        return invalid("must not be empty".into());
    }
    if chars > MAX_ID_CHARS {
        return invalid(format!(
            "is {chars} characters long; at most {MAX_ID_CHARS} allowed"
        ));
    }
    if let Some((at, c)) = s.chars().enumerate().find(|(_, c)| not_printable(*c)) {
        return invalid(format!(
            "character {at} is not printable (U+{:04X})",
            c as u32
        ));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return invalid("must not start or end with a space".into());
    }
    Ok(())
}

/// Control characters, whitespace other than the plain space, and the invisible format
/// characters that make two different ids look the same (soft hyphen, zero-width, bidi
/// controls, BOM).
fn not_printable(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
        )
}

/// An identifier: 1–128 printable characters (no control characters, no whitespace other than
/// inner spaces). Used for device, site, card, merchant and transaction ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub fn parse(field: &str, s: impl Into<String> + AsRef<str>) -> Result<Self, FieldError> {
        check_ident(field, s.as_ref())?;
        Ok(Ident(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client-supplied unique id of an event (same rules as [`Ident`]). Every view counts an
/// event id once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn parse(s: impl Into<String> + AsRef<str>) -> Result<Self, FieldError> {
        check_ident("event_id", s.as_ref())?;
        Ok(EventId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Event time, in milliseconds since the Unix epoch (UTC).
///
/// Accepted on the wire as an RFC 3339 string (any offset; sub-millisecond digits are truncated)
/// or as an integer number of epoch milliseconds; written as epoch milliseconds. Must lie between
/// [`EventTime::MIN`] (2000-01-01) and [`EventTime::MAX`] (end of year 9999): an epoch in
/// *seconds* lands in 1970 and is rejected with a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventTime(i64);

impl EventTime {
    /// 2000-01-01T00:00:00Z.
    pub const MIN: EventTime = EventTime(946_684_800_000);
    /// 9999-12-31T23:59:59.999Z.
    pub const MAX: EventTime = EventTime(253_402_300_799_999);

    pub fn from_millis(field: &str, millis: i64) -> Result<Self, FieldError> {
        if millis < Self::MIN.0 {
            let hint = if (0..100_000_000_000).contains(&millis) {
                " (this looks like epoch seconds; send epoch milliseconds)"
            } else {
                ""
            };
            return Err(FieldError::new(
                field,
                ErrorCode::OutOfRange,
                format!("{millis} ms is before 2000-01-01T00:00:00Z{hint}"),
            ));
        }
        if millis > Self::MAX.0 {
            return Err(FieldError::new(
                field,
                ErrorCode::OutOfRange,
                format!("{millis} ms is after year 9999"),
            ));
        }
        Ok(EventTime(millis))
    }

    pub fn parse_rfc3339(field: &str, s: &str) -> Result<Self, FieldError> {
        let parsed = DateTime::parse_from_rfc3339(s).map_err(|e| {
            FieldError::new(
                field,
                ErrorCode::InvalidValue,
                format!("{s:?} is not an RFC 3339 timestamp ({e}); expected e.g. \"2026-11-25T10:00:00Z\" or epoch milliseconds"),
            )
        })?;
        Self::from_millis(field, parsed.timestamp_millis())
    }

    /// The current system time.
    pub fn now() -> Self {
        EventTime(Utc::now().timestamp_millis())
    }

    /// Unchecked constructor for values computed from valid event times (window bounds).
    pub const fn from_millis_unchecked(millis: i64) -> Self {
        EventTime(millis)
    }

    pub fn millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{} ms", self.0),
        }
    }
}

/// `ts` as it arrives: epoch milliseconds or an RFC 3339 string.
pub(crate) enum RawTs<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
}

impl RawTs<'_> {
    pub(crate) fn parse(self, field: &str) -> Result<EventTime, FieldError> {
        match self {
            RawTs::Millis(ms) => EventTime::from_millis(field, ms),
            RawTs::Text(s) => EventTime::parse_rfc3339(field, &s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format_args!(
                    "invalid type: floating point `{v}`, expected an RFC 3339 string or integer epoch milliseconds"
                )))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A card payment amount, held exactly in hundredths (0.01 – 1,000,000.00).
///
/// On the wire it is a JSON number with at most two decimals (the shortest decimal form of the
/// parsed number is checked, so `12.345` and `0.001` are rejected and `12.30` is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub const MAX_CENTS: i64 = 100_000_000;

    pub fn from_f64(field: &str, v: f64) -> Result<Self, FieldError> {
        let out_of_range = |why: &str| {
            Err(FieldError::new(
                field,
                ErrorCode::OutOfRange,
                format!("{v} {why}"),
            ))
        };
        if !v.is_finite() {
            return Err(FieldError::new(
                field,
                ErrorCode::InvalidValue,
                "must be a finite number",
            ));
        }
        if v <= 0.0 {
            return out_of_range("must be greater than 0");
        }
        if v > 1_000_000.0 {
            return out_of_range("exceeds the maximum of 1000000");
        }
        let text = v.to_string();
        let decimals = text.split_once('.').map_or(0, |(_, frac)| frac.len());
        if decimals > 2 {
            return Err(FieldError::new(
                field,
                ErrorCode::InvalidValue,
                format!("{text} has {decimals} decimals; at most 2 allowed"),
            ));
        }
        Ok(Amount((v * 100.0).round() as i64))
    }

    pub fn from_cents(field: &str, cents: i64) -> Result<Self, FieldError> {
        if cents <= 0 || cents > Self::MAX_CENTS {
            return Err(FieldError::new(
                field,
                ErrorCode::OutOfRange,
                format!("{cents} cents is outside 1..=100000000"),
            ));
        }
        Ok(Amount(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident, $len:literal, $table:ident, $what:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
                let code: [u8; $len] = match s.as_bytes().try_into() {
                    Ok(code) if $table.binary_search(&s).is_ok() => code,
                    _ => {
                        let hint = if $table.binary_search(&s.to_ascii_uppercase().as_str()).is_ok() {
                            " (codes are upper case)"
                        } else {
                            ""
                        };
                        return Err(FieldError::new(
                            field,
                            ErrorCode::InvalidValue,
                            format!(concat!("{:?} is not an ", $what, " code{}; expected e.g. \"", $example, "\""), s, hint),
                        ));
                    }
                };
                Ok($name(code))
            }

            pub fn as_str(&self) -> &str {
                // constructed only from entries of an ASCII table
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

code_type!(
    /// An active ISO 4217 currency code, upper case (`EUR`, `USD`, …).
    Currency, 3, CURRENCIES, "ISO 4217 currency", "EUR"
);
code_type!(
    /// An ISO 3166-1 alpha-2 country code, upper case (`FR`, `US`, …).
    Country, 2, COUNTRIES, "ISO 3166-1 alpha-2 country", "FR"
);

/// An ISO 18245 merchant category code, 0000–9999. Accepted as a string of exactly four digits
/// (`"5411"`) or an integer (`5411`); written as the four-digit string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mcc(u16);

impl Mcc {
    pub fn new(field: &str, code: i64) -> Result<Self, FieldError> {
        match u16::try_from(code) {
            Ok(c) if c <= 9999 => Ok(Mcc(c)),
            _ => Err(FieldError::new(
                field,
                ErrorCode::OutOfRange,
                format!("{code} is not a merchant category code (0000–9999)"),
            )),
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(
                field,
                ErrorCode::InvalidValue,
                format!(
                    "{s:?} is not a merchant category code; expected four digits like \"5411\""
                ),
            ));
        }
        Self::new(field, s.parse().unwrap_or(i64::MAX))
    }

    pub fn code(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Mcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}

impl Serialize for Mcc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `mcc` as it arrives: a string or an integer.
pub(crate) enum RawMcc<'a> {
    Code(i64),
    Text(Cow<'a, str>),
}

impl RawMcc<'_> {
    pub(crate) fn parse(self, field: &str) -> Result<Mcc, FieldError> {
        match self {
            RawMcc::Code(c) => Mcc::new(field, c),
            RawMcc::Text(s) => Mcc::parse(field, &s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMcc<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawMcc<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a four-digit string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawMcc::Code(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawMcc::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawMcc::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawMcc::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Check a float field: finite and inside `[min, max]`.
pub(crate) fn check_range(
    field: &str,
    v: f64,
    min: f64,
    max: f64,
    unit: &str,
) -> Result<f64, FieldError> {
    if !v.is_finite() {
        return Err(FieldError::new(
            field,
            ErrorCode::InvalidValue,
            "must be a finite number",
        ));
    }
    if v < min || v > max {
        let range = if max == f64::MAX {
            format!("≥ {min}")
        } else {
            format!("{min} … {max}")
        };
        return Err(FieldError::new(
            field,
            ErrorCode::OutOfRange,
            format!("{v} {unit} is outside {range}"),
        ));
    }
    Ok(v)
}
