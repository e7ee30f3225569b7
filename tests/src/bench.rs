//! The project's main job, short: `lambdalake-loadgen bench` starts every service as a process on
//! fresh topics, drives the workload through both architectures, and writes the report. Then the
//! course map's commands (`docs/course-map.md`) run against those same services, so none of them
//! can rot. The same run is observed as an operator would: Prometheus scrapes the services and
//! every PromQL expression of the Grafana dashboards must return data, and the spans the services
//! export over OTLP must link one event's trace from ingest to every consumer and to serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::observe::{OtlpReceiver, Prometheus, ReceivedSpan, check_dashboards, free_port_range};
use crate::support::{unique, workspace_binary};

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```sh blocks of a Markdown file, with the heading above each.
fn sh_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        match &mut block {
            Some(b) if line.trim_start().starts_with("```") => {
                out.push((heading.clone(), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim_start().starts_with("```sh") => block = Some(String::new()),
            None => {
                if line.starts_with('#') {
                    heading = line.trim_start_matches('#').trim().to_owned();
                }
            }
        }
    }
    out
}

#[test]
fn sh_blocks_are_found_with_their_heading() {
    let md = "# A\ntext\n```sh\necho 1\n```\n## B\n```rust\nx\n```\n```sh\necho 2\necho 3\n```\n";
    assert_eq!(
        sh_blocks(md),
        vec![
            ("A".to_owned(), "echo 1\n".to_owned()),
            ("B".to_owned(), "echo 2\necho 3\n".to_owned())
        ]
    );
}

/// Stop the services the bench left running (their pid files).
fn stop_services(run_dir: &Path) {
    for name in ["ingest", "speed", "batch", "serving", "lakehouse"] {
        if let Ok(pid) = std::fs::read_to_string(run_dir.join(format!("{name}.pid"))) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

#[test]
fn short_bench_reports_both_architectures_exact_after_the_recompute_then_the_course_map_runs() {
    let loadgen = workspace_binary("lambdalake-loadgen");
    let dir = std::env::temp_dir().join(unique("bench"));
    let run_dir = dir.join("run");
    let out = dir.join("report");
    // the services' ports, known before they start: Prometheus scrapes them from the first second
    let base = free_port_range(5);
    let jobs = ["ingest", "speed", "batch", "serving", "lakehouse"];
    let targets: Vec<(&str, String)> = jobs
        .iter()
        .zip(0u16..)
        .map(|(job, i)| (*job, format!("127.0.0.1:{}", base + i)))
        .collect();
    let prometheus = Prometheus::start(&dir.join("prometheus"), &targets);
    let receiver = OtlpReceiver::start();
    let started = unix_seconds();
    let status = Command::new(&loadgen)
        .args([
            "bench",
            "--duration",
            "15s",
            "--rate",
            "500",
            "--devices",
            "20",
            "--cards",
            "200000",
            // every payment a fraud scenario in 20: enough frauds in 15 s to measure
            "--fraud",
            "0.05",
            "--batch-interval",
            "10s",
            "--check-every",
            "5s",
            "--settle",
            "5s",
            "--no-recovery",
            "--keep-running",
            "--base-port",
            &base.to_string(),
        ])
        // the services inherit these: traces to the receiver, and the lakehouse's maintenance
        // often enough to be seen in a short run
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("LAMBDALAKE_LAKEHOUSE_OPTIMIZE_EVERY", "10s")
        .env("LAMBDALAKE_LAKEHOUSE_VACUUM_EVERY", "15s")
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run the bench");
    if !status.success() {
        stop_services(&run_dir);
        panic!("the bench failed: {status}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("JSON report");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for chart in ["freshness.png", "throughput.png", "accuracy.png"] {
        let png = std::fs::read(out.join(chart)).expect("chart written");
        assert!(png.starts_with(b"\x89PNG"), "{chart} is a PNG");
    }
    assert!(md.contains("Lakehouse gold") && md.contains("Lambda merged view"));

    // both architectures processed events
    let throughput = report["throughput"].as_array().expect("throughput");
    for (what, v) in throughput
        .iter()
        .map(|t| (t[0].as_str().unwrap(), t[1].as_f64().unwrap()))
    {
        assert!(v > 0.0, "{what}: {v} events/s");
    }
    // freshness measured on the speed path and gold
    for row in report["freshness"].as_array().unwrap() {
        let path = row["path"].as_str().unwrap();
        if !path.contains("batch") {
            assert!(
                row["percentiles"]["samples"].as_u64().unwrap() > 0,
                "freshness of {path}: {row}"
            );
        }
    }
    // exact after the recompute, in both
    let checks = report["checks"].as_array().unwrap();
    let after = checks.last().unwrap();
    assert_eq!(after["label"], "after the batch recompute");
    for arch in ["lambda", "lakehouse"] {
        let (judged, exact) = (
            after[arch]["judged"].as_u64().unwrap(),
            after[arch]["exact"].as_u64().unwrap(),
        );
        assert!(judged > 20, "{arch}: {judged} windows judged");
        assert_eq!(
            exact,
            judged,
            "{arch}: windows exact after the recompute; wrong: {}",
            after[format!("{arch}_wrong")]
        );
    }
    let sent = &report["sent"];
    assert!(sent["accepted"].as_u64().unwrap() > 5_000, "{sent}");
    assert_eq!(sent["malformed_accepted"], 0);
    assert_eq!(sent["valid_rejected"], 0);
    assert!(
        sent["rejected"].as_u64().unwrap() > 0,
        "malformed events were sent"
    );
    // fraud: alerts matched with the truth in both paths
    for (path, d) in report["detection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d[0].as_str().unwrap(), &d[1]))
    {
        assert!(d["frauds"].as_u64().unwrap() > 0, "{path}: {d}");
        assert!(d["true_positives"].as_u64().unwrap() > 0, "{path}: {d}");
    }
    // cost and storage of every service and store
    assert_eq!(report["processes"].as_array().unwrap().len(), 5);
    for p in report["processes"].as_array().unwrap() {
        assert!(p["cpu_seconds"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["peak_rss_mib"].as_f64().unwrap() > 1.0, "{p}");
    }
    for s in report["storage"].as_array().unwrap() {
        assert!(s["bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    }
    assert!(report["lines_of_code"].as_array().unwrap().len() >= 2);

    // the dashboards: every expression evaluates to data over the run
    let unhealthy = prometheus.unhealthy_targets();
    let failures = check_dashboards(
        &prometheus,
        &workspace_root().join("dashboards"),
        started,
        unix_seconds(),
    );

    // one event's trace: ingest → the record headers → speed, lakehouse, archiver; then serving
    let env = std::fs::read_to_string(out.join("services.env")).expect("services.env");
    let url = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export LAMBDALAKE_{name}_URL=")))
            .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_owned())
            .unwrap_or_else(|| panic!("{name} URL in services.env:\n{env}"))
    };
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let device = unique("dev-traced");
    let now_ms = (unix_seconds() * 1000.0) as i64;
    let event = serde_json::json!({"event_id": unique("traced"), "device_id": device, "site": "lyon",
        "ts": now_ms, "temperature_c": 21.5, "vibration_mm_s": 0.4});
    let posted = reqwest::blocking::Client::new()
        .post(format!("{}/v1/sensor-readings", url("INGEST")))
        .header("content-type", "application/json")
        .header("traceparent", &traceparent)
        .body(event.to_string())
        .send()
        .expect("post the traced event");
    assert!(posted.status().is_success(), "{:?}", posted.text());
    let wanted = [
        ("lambdalake-ingest", "ingest request"),
        ("lambdalake-ingest", "produce"),
        ("lambdalake-speed", "speed micro-batch apply"),
        ("lambdalake-lakehouse", "lakehouse micro-batch commit"),
        ("lambdalake-batch", "archiver write"),
    ];
    let has = |spans: &[ReceivedSpan], service: &str, name: &str| {
        spans.iter().any(|s| s.service == service && s.name == name)
    };
    let spans = receiver.wait_for_trace(&trace_id, Duration::from_secs(60), |spans| {
        wanted.iter().all(|(svc, name)| has(spans, svc, name))
    });
    // the consumers are children of the produce span, whose context the record carried
    let produce = spans
        .iter()
        .find(|s| s.name == "produce")
        .map(|s| s.span_id.clone());
    let children_of_produce: Vec<&str> = spans
        .iter()
        .filter(|s| Some(&s.parent_span_id) == produce.as_ref())
        .map(|s| s.service.as_str())
        .collect();
    let query = reqwest::blocking::Client::new()
        .get(format!(
            "{}/v1/lambda/sensors/{device}/windows",
            url("SERVING")
        ))
        .header("traceparent", &traceparent)
        .send()
        .expect("query serving");
    assert!(query.status().is_success(), "{:?}", query.text());
    let served = receiver.wait_for_trace(&trace_id, Duration::from_secs(20), |spans| {
        has(spans, "lambdalake-serving", "serving query")
    });
    let receiver_errors = receiver.errors();
    let span_count = receiver.spans().len();

    // the course map's commands, against the services the bench left running
    let course = std::fs::read_to_string(workspace_root().join("docs/course-map.md"))
        .expect("docs/course-map.md");
    let blocks = sh_blocks(&course);
    assert!(blocks.len() >= 5, "{} command blocks", blocks.len());
    let path = format!(
        "{}:{}",
        loadgen.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failed = Vec::new();
    for (heading, block) in &blocks {
        let script = format!("set -euo pipefail\n{env}\n{block}");
        let output = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("PATH", &path)
            .output()
            .expect("bash");
        if !output.status.success() {
            failed.push(format!(
                "{heading}: {}\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    stop_services(&run_dir);
    drop(prometheus);
    assert!(
        unhealthy.is_empty(),
        "Prometheus could not scrape: {unhealthy:?}"
    );
    assert!(
        failures.is_empty(),
        "{} dashboard expressions without data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(receiver_errors.is_empty(), "{receiver_errors:?}");
    for (service, name) in wanted {
        assert!(
            has(&spans, service, name),
            "no {name:?} span from {service} in trace {trace_id} ({span_count} spans received): {spans:#?}"
        );
    }
    for service in [
        "lambdalake-speed",
        "lambdalake-lakehouse",
        "lambdalake-batch",
    ] {
        assert!(
            children_of_produce.contains(&service),
            "{service}'s span is not a child of ingest's produce span: {spans:#?}"
        );
    }
    assert!(
        has(&served, "lambdalake-serving", "serving query"),
        "no serving span in trace {trace_id}: {served:#?}"
    );
    assert!(
        failed.is_empty(),
        "course map commands failed:\n{}",
        failed.join("\n\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
