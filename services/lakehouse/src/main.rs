use std::process::ExitCode;

use clap::Parser;
use lambdalake_lakehouse::{Application, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
#[allow(
    clippy::print_stderr,
    clippy::print_stdout,
    reason = "before logging is set up; the bench's own output"
)]
async fn main() -> ExitCode {
    // `lambdalake-lakehouse bench [--commits N] [--rows N] [--dir D]`
    if std::env::args().nth(1).as_deref() == Some("bench") {
        let args = lambdalake_lakehouse::bench::BenchArgs::parse_from(std::env::args().skip(1));
        return match lambdalake_lakehouse::bench::bench(&args).await {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lambdalake-lakehouse: bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = Config::parse();
    // kept to the end of main: dropping it exports the spans still queued
    let _tracing =
        match lambdalake_runtime::telemetry::init(&config.telemetry, "lambdalake-lakehouse") {
            Ok(tracing) => tracing,
            Err(e) => {
                eprintln!("lambdalake-lakehouse: {e}");
                return ExitCode::from(2);
            }
        };
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
