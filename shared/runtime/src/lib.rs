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
