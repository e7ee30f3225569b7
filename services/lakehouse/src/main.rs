use std::process::ExitCode;

use clap::Parser;
use lambdalake_lakehouse::{Application, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
#[allow(clippy::print_stderr, reason = "before logging is set up")]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = lambdalake_runtime::telemetry::init(&config.telemetry) {
        eprintln!("lambdalake-lakehouse: {e}");
        return ExitCode::from(2);
    }
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            ExitCode::FAILURE
        }
    }
}
