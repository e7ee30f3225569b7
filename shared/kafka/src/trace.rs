//! W3C trace context (`traceparent`, `tracestate`) carried in Kafka record headers, so that one
//! event's trace links the HTTP request that brought it to the consumers that process it.

use lambdalake_runtime::otel;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

/// A validated W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

/// Longest `tracestate` carried (the W3C limit is 32 members of ≤ 256 characters; 512 is what
/// the specification asks every vendor to propagate at least).
const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    pub const TRACEPARENT: &'static str = "traceparent";
    pub const TRACESTATE: &'static str = "tracestate";

    /// Parse the two HTTP headers; an absent or malformed `traceparent` gives `None` (the
    /// specification says to start a new trace then, not to fail the request).
    pub fn from_http(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?.trim();
        let parts: Vec<&str> = tp.split('-').collect();
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && parts[2].bytes().any(|b| b != b'0')
            && hex(parts[3], 2)
            && (parts[0] != "00" || parts.len() == 4);
        if !valid {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE
                    && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Some(TraceContext {
            traceparent: tp.to_owned(),
            tracestate,
        })
    }

    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace context a record carries in its headers, if any (validated as from HTTP).
    pub fn from_message(m: &impl Message) -> Option<TraceContext> {
        let headers = m.headers()?;
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        };
        TraceContext::from_http(value(Self::TRACEPARENT), value(Self::TRACESTATE))
    }

    /// The record headers to attach.
    pub fn headers(&self) -> OwnedHeaders {
        let headers = OwnedHeaders::new_with_capacity(2).insert(Header {
            key: Self::TRACEPARENT,
            value: Some(self.traceparent.as_bytes()),
        });
        match &self.tracestate {
            Some(ts) => headers.insert(Header {
                key: Self::TRACESTATE,
                value: Some(ts.as_bytes()),
            }),
            None => headers,
        }
    }
}

/// The record's trace, as the parent of a consumer's span; `None` (and nothing read) when
/// tracing is off.
pub fn parent_of(m: &impl Message) -> Option<otel::Parent> {
    if !otel::enabled() {
        return None;
    }
    let tc = TraceContext::from_message(m)?;
    otel::Parent::from_w3c(tc.traceparent(), tc.tracestate())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_and_invalid_traceparents() {
        let ctx = TraceContext::from_http(Some(TP), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), TP);
        assert_eq!(ctx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::from_http(Some(bad), None), None, "{bad}");
        }
        assert_eq!(TraceContext::from_http(None, Some("a=b")), None);
    }
}
