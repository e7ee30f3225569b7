//! `lambdalake-loadgen run`: send the workload for a while, print a one-line JSON summary, and
//! optionally write the ground truth.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lambdalake_kafka::{KafkaArgs, ProducerArgs, TopicArgs};
use serde::Serialize;

use crate::generator::{Fractions, Generator, Spec};
use crate::send::{SendArgs, Sender};
use crate::truth::{Truth, floor_minute};

/// The workload's shape (see the generator's documentation for what each scenario is).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Seed: the same seed (and clock) gives the same events.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Devices (spread over 8 sites).
    #[arg(long, default_value = "1000")]
    pub devices: usize,
    /// Cards. A card pays rarely (5+ payments in 10 minutes is a fraud signal): keep
    /// cards ≥ 1,000 × the payments per second, or legitimate cards trip the rule.
    #[arg(long, default_value = "1000000")]
    pub cards: usize,
    /// Share of the events that are payments (the rest are sensor readings).
    #[arg(long = "payments", id = "payment_share", default_value = "0.1")]
    pub payments: f64,
    /// Fraud scenarios started per payment.
    #[arg(long, default_value = "0.002")]
    pub fraud: f64,
    /// Share of legitimate payments labelled `fraud: false`.
    #[arg(long, default_value = "0.01")]
    pub legit_labels: f64,
    /// Share of events sent out of order (earlier event time, within the allowed lateness).
    #[arg(long, default_value = "0.05")]
    pub out_of_order: f64,
    /// Largest delay of an out-of-order event (keep it below the speed layer's allowed
    /// lateness, 30 s by default).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub out_of_order_by: Duration,
    /// Share of events that are late: older than any watermark.
    #[arg(long, default_value = "0.01")]
    pub late: f64,
    /// How old a late event is: uniformly between `--late-by` and `--late-by-max`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub late_by: Duration,
    /// See `--late-by`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub late_by_max: Duration,
    /// Share of events sent twice (same `event_id`).
    #[arg(long, default_value = "0.01")]
    pub duplicates: f64,
    /// Share of malformed events (ingest rejects them).
    #[arg(long, default_value = "0.005")]
    pub malformed: f64,
    /// Delay of a fraud label after its payment (a chargeback).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub label_delay: Duration,
}

impl WorkloadArgs {
    pub fn spec(&self, run: &str) -> anyhow::Result<Spec> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let spec = Spec {
            seed: self.seed,
            run: run.to_owned(),
            devices: self.devices,
            cards: self.cards,
            payments: self.payments,
            fraud: self.fraud,
            legit_labels: self.legit_labels,
            fractions: Fractions {
                out_of_order: self.out_of_order,
                late: self.late,
                duplicate: self.duplicates,
                malformed: self.malformed,
            },
            out_of_order_by_ms: ms(self.out_of_order_by),
            late_by_ms: (ms(self.late_by), ms(self.late_by_max)),
            label_delay_ms: ms(self.label_delay),
        };
        spec.check().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// How long to send.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,

    /// Prefix of the event ids (default: `run-<start ms>`), unique per run.
    #[arg(long)]
    run_id: Option<String>,

    /// Write the ground truth (every window's expected value, the fraudulent payments) here.
    #[arg(long)]
    truth: Option<PathBuf>,

    /// No progress line on standard error.
    #[arg(long)]
    quiet: bool,

    #[command(flatten)]
    workload: WorkloadArgs,

    #[command(flatten)]
    send: SendArgs,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    producer: ProducerArgs,

    #[command(flatten)]
    topics: TopicArgs,
}

/// The ground truth as JSON.
#[derive(Serialize)]
struct TruthFile<'a> {
    run: &'a str,
    readings: u64,
    payments: u64,
    labels: u64,
    sensor_windows: Vec<serde_json::Value>,
    card_windows: Vec<serde_json::Value>,
    fraudulent_payments: Vec<&'a String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let run = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("run-{}", lambdalake_events::EventTime::now().millis()));
    let spec = args.workload.spec(&run)?;
    let mut generator = Generator::new(spec);
    let truth = Arc::new(Mutex::new(Truth::default()));
    let sender = Sender::new(
        args.send.clone(),
        &args.kafka,
        &args.producer,
        args.topics.clone(),
        truth.clone(),
    )
    .context("cannot start the sender")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let summary = sender
        .run(&mut generator, args.duration, &stop, !args.quiet)
        .await;
    #[allow(clippy::print_stdout, reason = "the command's output")]
    {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if let Some(path) = &args.truth {
        let t = truth.lock().unwrap_or_else(|e| e.into_inner());
        let start = |ms: i64| crate::report::rfc3339(floor_minute(ms));
        let mut fraud: Vec<&String> = t.fraud.iter().collect();
        fraud.sort();
        let file = TruthFile {
            run: &run,
            readings: t.readings,
            payments: t.payments,
            labels: t.labels,
            sensor_windows: t
                .sensors
                .iter()
                .map(|((k, s), a)| {
                    serde_json::json!({"device_id": k, "start": start(*s), "count": a.count,
                    "temperature_c": {"min": a.temperature_c.min, "max": a.temperature_c.max, "mean": a.temperature_c.mean(a.count)},
                    "vibration_mm_s": {"min": a.vibration_mm_s.min, "max": a.vibration_mm_s.max, "mean": a.vibration_mm_s.mean(a.count)}})
                })
                .collect(),
            card_windows: t
                .cards
                .iter()
                .map(|((k, s), a)| {
                    serde_json::json!({"card_id": k, "start": start(*s), "count": a.count,
                    "amount": {"sum": a.amount_sum_cents as f64 / 100.0, "max": a.amount_max_cents as f64 / 100.0}})
                })
                .collect(),
            fraudulent_payments: fraud,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec(&file)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("ground truth written to {}", path.display());
    }
    if summary.malformed_accepted > 0 || summary.valid_rejected > 0 {
        anyhow::bail!(
            "ingest disagreed with the generator: {} malformed events accepted, {} valid events rejected",
            summary.malformed_accepted,
            summary.valid_rejected
        );
    }
    Ok(())
}
