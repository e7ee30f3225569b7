//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when an endpoint is configured with
//! the standard variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`); off, and free, otherwise.
//!
//! The SDK's other standard variables apply too: `OTEL_SERVICE_NAME` (default: the binary's
//! name), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default:
//! every trace), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`
//! (spans beyond the queue are dropped, never waited for). `OTEL_SDK_DISABLED=true` turns tracing
//! off whatever the endpoint says.
//!
//! The spans are few and explicit (one per HTTP request, produce, micro-batch, commit), made with
//! [`Span`]; a W3C `traceparent` carried in Kafka record headers links a consumer's span to the
//! request that brought the event ([`Parent::from_w3c`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use opentelemetry::trace::SpanKind as Kind;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The variables that name the collector, the signal-specific one first.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
/// The one protocol built in (no gRPC stack: build time is a feature).
pub const PROTOCOL: &str = "http/protobuf";

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error(
        "{var}={value:?}: only {PROTOCOL} is built in (point the endpoint at the collector's OTLP/HTTP port, usually 4318)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("cannot export traces to {endpoint:?}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The configured collector endpoint, if tracing is on.
pub fn configured_endpoint() -> Option<String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    ENDPOINT_VARS.iter().find_map(|v| env(v))
}

/// Whether spans are being recorded and exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The installed exporter; flushes the spans still queued and stops it when dropped.
#[must_use = "dropping it stops the export"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Start exporting if an endpoint is configured (see the module documentation).
    pub fn init(service_name: &str) -> Result<Tracing, TracingError> {
        let Some(endpoint) = configured_endpoint() else {
            return Ok(Tracing { provider: None });
        };
        for var in PROTOCOL_VARS {
            if let Some(value) = env(var)
                && value.trim() != PROTOCOL
            {
                return Err(TracingError::Protocol { var, value });
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|source| TracingError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        let mut resource = Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        global::set_tracer_provider(provider.clone());
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(%endpoint, "exporting traces over OTLP ({PROTOCOL})");
        Ok(Tracing {
            provider: Some(provider),
        })
    }

    /// A disabled instance (tests, tools).
    pub fn off() -> Tracing {
        Tracing { provider: None }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "traces not all exported at shutdown");
            }
        }
    }
}

/// A remote parent: the W3C trace context of the request or record that caused the work.
#[derive(Clone, Debug)]
pub struct Parent(Context);

impl Parent {
    /// From the `traceparent` and `tracestate` values; `None` when malformed or when tracing
    /// is off.
    pub fn from_w3c(traceparent: &str, tracestate: Option<&str>) -> Option<Parent> {
        if !enabled() {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
        if let Some(ts) = tracestate {
            carrier.insert("tracestate".to_owned(), ts.to_owned());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        cx.span()
            .span_context()
            .is_valid()
            .then(|| Parent(cx.clone()))
    }

    /// The trace this parent belongs to, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.trace().to_string()
    }

    fn trace(&self) -> opentelemetry::trace::TraceId {
        self.0.span().span_context().trace_id()
    }
}

/// At most this many traces get a micro-batch's span (a batch can hold records of thousands of
/// requests; the span is recorded in the first traces seen, and counts how many were left out).
pub const MAX_TRACES_PER_BATCH: usize = 16;

/// The distinct traces among a micro-batch's records. The batch's work is one span in each, as a
/// child of the record's context, so that one event's trace shows every consumer that processed
/// it.
#[derive(Default, Clone, Debug)]
pub struct BatchTraces {
    parents: Vec<Parent>,
    /// Traced records whose trace was not given the span (beyond the cap).
    left_out: u64,
}

impl BatchTraces {
    pub fn add(&mut self, parent: &Parent) {
        let trace = parent.trace();
        if self.parents.iter().any(|p| p.trace() == trace) {
            return;
        }
        if self.parents.len() < MAX_TRACES_PER_BATCH {
            self.parents.push(parent.clone());
        } else {
            self.left_out += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// One span per trace, begun at `start`; each ends when dropped. The caller sets the
    /// batch's attributes on every one.
    pub fn spans(&self, name: &'static str, kind: SpanKind, start: SystemTime) -> Vec<Span> {
        self.parents
            .iter()
            .map(|p| {
                let mut span = Span::start_at(name, kind.clone(), Some(p), Some(start));
                span.set("lambdalake.batch.traces", self.parents.len() as i64);
                span.set("lambdalake.batch.traces_left_out", self.left_out as i64);
                span
            })
            .collect()
    }
}

/// One span; does nothing when tracing is off. Ends when dropped (or with [`Span::end`]).
pub struct Span {
    inner: Option<(Context, global::BoxedSpan)>,
}

impl Span {
    /// Start a span, as a child of `parent` or as the root of a new trace.
    pub fn start(name: &'static str, kind: SpanKind, parent: Option<&Parent>) -> Span {
        Self::start_at(name, kind, parent, None)
    }

    /// Start a span whose work began at `start` (a micro-batch's span is made once it is done).
    pub fn start_at(
        name: &'static str,
        kind: SpanKind,
        parent: Option<&Parent>,
        start: Option<SystemTime>,
    ) -> Span {
        if !enabled() {
            return Span { inner: None };
        }
        let tracer = global::tracer("lambdalake");
        let mut builder = tracer.span_builder(name).with_kind(kind);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let parent_cx = match parent {
            Some(p) => p.0.clone(),
            None => Context::new(),
        };
        let span = builder.start_with_context(&tracer, &parent_cx);
        Span {
            inner: Some((parent_cx, span)),
        }
    }

    /// A span that records nothing (for work that is not traced).
    pub fn none() -> Span {
        Span { inner: None }
    }

    /// A child of this span.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        Span::start(name, kind, self.as_parent().as_ref())
    }

    /// This span as the parent of other work (a Kafka record, a child span).
    pub fn as_parent(&self) -> Option<Parent> {
        let (parent_cx, span) = self.inner.as_ref()?;
        Some(Parent(
            parent_cx.with_remote_span_context(span.span_context().clone()),
        ))
    }

    /// Whether this span records anything.
    pub fn is_recording(&self) -> bool {
        self.inner.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some((_, span)) = &mut self.inner {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Mark the span failed.
    pub fn fail(&mut self, message: impl std::fmt::Display) {
        if let Some((_, span)) = &mut self.inner {
            span.set_status(Status::error(message.to_string()));
        }
    }

    /// The W3C `traceparent` (and `tracestate`) that makes other work this span's child.
    pub fn w3c(&self) -> Option<(String, Option<String>)> {
        let parent = self.as_parent()?;
        let mut carrier = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(&parent.0, &mut carrier);
        let tp = carrier.remove("traceparent")?;
        Some((tp, carrier.remove("tracestate").filter(|s| !s.is_empty())))
    }

    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((_, span)) = &mut self.inner {
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_free() {
        // no endpoint in the test environment: nothing recorded, nothing parsed
        let span = Span::start("x", SpanKind::Internal, None);
        assert!(!span.is_recording());
        assert!(span.w3c().is_none());
        assert!(
            Parent::from_w3c(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None
            )
            .is_none()
        );
    }
}
