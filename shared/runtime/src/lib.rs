//! What every lambdalake service shares: [`telemetry`] (logs), [`otel`] (traces over OTLP),
//! [`ops`] (`/healthz`, `/readyz`, `/metrics`) and [`tasks`] (named tasks, cancellation, shutdown
//! on signals).

pub mod access;
pub mod ops;
pub mod otel;
pub mod tasks;
pub mod telemetry;
pub mod tls;

pub use access::{Access, Denied, Secret};
pub use ops::Readiness;
pub use tasks::Tasks;
pub use telemetry::TelemetryArgs;

/// An error and every cause under it, `outer: cause: root` (a TLS handshake that failed says
/// which certificate check failed).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        m.push_str(": ");
        m.push_str(&cause.to_string());
        source = cause.source();
    }
    m
}
