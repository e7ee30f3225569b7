use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logging configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log filter in `tracing` syntax, e.g. `info` or `info,lambdalake_ingest=debug`.
    #[arg(long = "log", env = "LAMBDALAKE_LOG", default_value = "info")]
    pub log_filter: String,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long = "log-format", env = "LAMBDALAKE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error(transparent)]
    Tracing(#[from] crate::otel::TracingError),
}

/// Install the global log subscriber (logs go to standard error) and, when an OTLP endpoint is
/// configured, the trace exporter ([`crate::otel`]). Keep the returned guard to the end of `main`:
/// dropping it exports the spans still queued.
pub fn init(
    args: &TelemetryArgs,
    service_name: &str,
) -> Result<crate::otel::Tracing, TelemetryError> {
    init_logs(args)?;
    // `rediss://` connections build their TLS configuration with the process's provider
    crate::tls::install_crypto_provider();
    Ok(crate::otel::Tracing::init(service_name)?)
}

/// Install the global log subscriber only (tools that make no spans).
pub fn init_logs(args: &TelemetryArgs) -> Result<(), TelemetryError> {
    // libraries that log every table snapshot at info, every binary column at warn, and an
    // absent table at error (their errors also come back to us as results, which we log):
    // quiet unless the filter names them
    let mut directives = args.log_filter.clone();
    for (chatty, level) in [
        ("buoyant_kernel", "off"),
        ("deltalake_core", "warn"),
        ("deltalake_core::writer::stats", "error"),
        ("deltalake_core::operations::merge", "error"),
        ("datafusion", "warn"),
    ] {
        if !directives.contains(chatty) {
            directives.push_str(&format!(",{chatty}={level}"));
        }
    }
    let filter = EnvFilter::try_new(&directives).map_err(|source| TelemetryError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // colours only for a person at a terminal, not in log files
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}
