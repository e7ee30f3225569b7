//! Splitting a request body into items: one JSON object, a JSON array of objects, or NDJSON
//! (one object per line). Items borrow from the body; nothing is copied.

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// How the body is framed, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one object, or an array of objects.
    Json,
    /// `application/x-ndjson` (also `application/jsonl`, `application/json-seq`-less lines):
    /// one object per line; blank lines are skipped.
    Ndjson,
}

/// One item of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// 0-based position among the body's items (blank NDJSON lines are not items).
    pub index: usize,
    /// 1-based line in an NDJSON body.
    pub line: Option<usize>,
    /// The item's JSON text, exactly as sent.
    pub json: &'a [u8],
}

/// A body that cannot be split into items at all (as opposed to a bad item).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is empty")]
    Empty,
    #[error("request body holds no events")]
    NoEvents,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body must be a JSON object or an array of objects, found {0}")]
    NotObjectOrArray(&'static str),
    #[error("request body holds more than {limit} events")]
    TooManyEvents { limit: usize },
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Split `body` into at most `limit` items.
pub fn split(body: &[u8], framing: Framing, limit: usize) -> Result<Vec<Item<'_>>, BodyError> {
    if is_blank(body) {
        return Err(BodyError::Empty);
    }
    let items = match framing {
        Framing::Json => split_json(body, limit)?,
        Framing::Ndjson => split_ndjson(body, limit)?,
    };
    if items.is_empty() {
        return Err(BodyError::NoEvents);
    }
    Ok(items)
}

fn split_json(body: &[u8], limit: usize) -> Result<Vec<Item<'_>>, BodyError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    match body[start] {
        b'{' => Ok(vec![Item {
            index: 0,
            line: None,
            json: body[start..].trim_ascii_end(),
        }]),
        b'[' => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let raw = LimitedArray { limit }
                .deserialize(&mut de)
                .and_then(|raw| de.end().map(|()| raw))
                .map_err(|e| {
                    if e.to_string().starts_with(TOO_MANY) {
                        BodyError::TooManyEvents { limit }
                    } else {
                        BodyError::InvalidJson(e.to_string())
                    }
                })?;
            Ok(raw
                .into_iter()
                .enumerate()
                .map(|(index, v)| Item {
                    index,
                    line: None,
                    json: v.get().as_bytes(),
                })
                .collect())
        }
        b'"' => Err(BodyError::NotObjectOrArray("a string")),
        b'-' | b'0'..=b'9' => Err(BodyError::NotObjectOrArray("a number")),
        b't' | b'f' => Err(BodyError::NotObjectOrArray("a boolean")),
        b'n' => Err(BodyError::NotObjectOrArray("null")),
        _ => Err(BodyError::InvalidJson(format!(
            "unexpected byte 0x{:02x} at offset {start}",
            body[start]
        ))),
    }
}

fn split_ndjson(body: &[u8], limit: usize) -> Result<Vec<Item<'_>>, BodyError> {
    let mut items = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if is_blank(line) {
            continue;
        }
        if items.len() == limit {
            return Err(BodyError::TooManyEvents { limit });
        }
        let line = line.trim_ascii();
        items.push(Item {
            index: items.len(),
            line: Some(n + 1),
            json: line,
        });
    }
    Ok(items)
}

const TOO_MANY: &str = "too many events";

/// The items of a JSON array, refusing the array as soon as it holds more than `limit`, so a
/// huge array of tiny items is not materialised before it is refused.
struct LimitedArray {
    limit: usize,
}

impl<'de> DeserializeSeed<'de> for LimitedArray {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LimitedArray {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.limit));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.limit {
                return Err(de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }
}
