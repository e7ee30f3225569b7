use std::process::ExitCode;

use clap::Parser;
use lambdalake_batch::{Application, Command, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
#[allow(
    clippy::print_stderr,
    clippy::print_stdout,
    reason = "the command's own output"
)]
async fn main() -> ExitCode {
    let config = Config::parse();
    // kept to the end of main: dropping it exports the spans still queued
    let _tracing = match lambdalake_runtime::telemetry::init(&config.telemetry, "lambdalake-batch")
    {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("lambdalake-batch: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Bench(args) = config.command() {
        lambdalake_batch::metrics::register();
        return match lambdalake_batch::bench::bench(&config, &args).await {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lambdalake-batch: bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if config.command() == Command::RunOnce {
        if let Err(problems) = config.check() {
            eprintln!(
                "lambdalake-batch: invalid configuration: {}",
                problems.join("; ")
            );
            return ExitCode::from(2);
        }
        lambdalake_batch::metrics::register();
        return match lambdalake_batch::run_once(&config).await {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lambdalake-batch: run failed: {e}");
                ExitCode::FAILURE
            }
        };
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
