//! `lambdalake-loadgen`: sends a sample through ingest and shows where it landed, and runs the
//! benchmarks.
#![allow(
    clippy::print_stderr,
    reason = "a command-line tool: progress and errors go to standard error"
)]

mod bench;
mod bench_speed;
mod compare;
mod generator;
mod report;
mod run;
mod sample;
mod send;
mod truth;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The benchmarks run services in-process: the same allocator as their binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lambdalake-loadgen",
    version,
    about = "lambdalake load generator and benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Post a few valid and invalid events to ingest, then read them back from Kafka.
    Sample(Box<sample::SampleArgs>),
    /// Send the seeded workload (readings, payments, fraud scenarios and their labels, with
    /// out-of-order, late, duplicate and malformed events) at a rate, open loop.
    Run(Box<run::RunArgs>),
    /// The Lambda-vs-Lakehouse benchmark (without a subcommand), or one component's benchmark.
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    component: Option<bench::BenchCommand>,

    #[command(flatten)]
    compare: compare::CompareArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // services the benchmarks run in-process log here; quiet unless LAMBDALAKE_LOG says otherwise
    let telemetry = lambdalake_runtime::TelemetryArgs {
        log_filter: std::env::var("LAMBDALAKE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        log_format: lambdalake_runtime::telemetry::LogFormat::Text,
    };
    if let Err(e) = lambdalake_runtime::telemetry::init_logs(&telemetry) {
        eprintln!("lambdalake-loadgen: {e}");
    }
    let result = match cli.command {
        Command::Sample(args) => sample::run(*args).await,
        Command::Run(args) => run::run(*args).await,
        Command::Bench(args) => match *args {
            BenchArgs {
                component: Some(cmd),
                ..
            } => bench::run(cmd).await,
            BenchArgs {
                component: None,
                compare,
            } => compare::run(compare).await,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lambdalake-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
