//! What an end-to-end run exposes to its operators, checked for real: an OTLP/HTTP receiver in
//! the test collects the spans the services export, and Prometheus (Debian's package, installed
//! by `infra/local/stack install-prometheus`) scrapes their `/metrics` so that every PromQL
//! expression of every Grafana dashboard in `dashboards/` can be evaluated against it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One span as a collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decode one OTLP/HTTP protobuf export request.
pub fn decode_spans(body: &[u8]) -> Result<Vec<ReceivedSpan>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    Ok(out)
}

/// A minimal OTLP/HTTP collector (`POST /v1/traces`, protobuf) on a free loopback port.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Requests that were not a decodable export (must stay empty).
    errors: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for the receiver");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (spans.clone(), errors.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, e) = (s.clone(), e.clone());
                std::thread::spawn(move || serve(stream, &s, &e));
            }
        });
        OtlpReceiver {
            endpoint,
            spans,
            errors,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// The spans of one trace, once `done` says they are all there (or at the deadline).
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let of_trace: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if done(&of_trace) || Instant::now() > deadline {
                return of_trace;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Serve one connection: HTTP/1.1 requests with a Content-Length, kept alive.
fn serve(stream: TcpStream, spans: &Mutex<Vec<ReceivedSpan>>, errors: &Mutex<Vec<String>>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if !request_line.starts_with("POST /v1/traces ") {
            errors
                .lock()
                .unwrap()
                .push(format!("unexpected request {request_line:?}"));
            "404 Not Found"
        } else if content_type != "application/x-protobuf" {
            errors
                .lock()
                .unwrap()
                .push(format!("content type {content_type:?}"));
            "415 Unsupported Media Type"
        } else {
            match decode_spans(&body) {
                Ok(got) => {
                    spans.lock().unwrap().extend(got);
                    "200 OK"
                }
                Err(err) => {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("undecodable export: {err}"));
                    "400 Bad Request"
                }
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `base`..`base + n` all free on loopback now.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random_range(0..20_000u16);
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A Prometheus server scraping `targets` (job name, `host:port`) every second; stopped when
/// dropped.
pub struct Prometheus {
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(dir: &Path, targets: &[(&str, String)]) -> Prometheus {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("Prometheus is not installed: run `infra/local/stack install-prometheus` (infra/local/test does)");
        std::fs::create_dir_all(dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port_range(1);
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !prometheus.ready() {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready after 30 s; its log:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn ready(&self) -> bool {
        reqwest::blocking::get(format!("{}/-/ready", self.url))
            .is_ok_and(|r| r.status().is_success())
    }

    /// `GET /api/v1/query_range`: the JSON answer, whatever its status.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: &str) -> serde_json::Value {
        reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/query_range", self.url))
            .query(&[
                ("query", expr),
                ("start", &format!("{start:.3}")),
                ("end", &format!("{end:.3}")),
                ("step", step),
            ])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| serde_json::json!({"status": "error", "error": e.to_string()}))
    }

    /// The scrape targets that are not up, with their last error.
    pub fn unhealthy_targets(&self) -> Vec<String> {
        let targets: serde_json::Value =
            reqwest::blocking::get(format!("{}/api/v1/targets", self.url))
                .and_then(|r| r.json())
                .unwrap_or_default();
        targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{}: {} {}", t["labels"]["job"], t["health"], t["lastError"]))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

/// Every (dashboard, panel title, expr) of the Grafana dashboards in `dir`, Grafana's interval
/// macros replaced as Grafana would with a 1 s scrape interval and a short range.
pub fn dashboard_exprs(dir: &Path) -> Vec<(String, String, String)> {
    fn walk(
        v: &serde_json::Value,
        file: &str,
        title: &str,
        out: &mut Vec<(String, String, String)>,
    ) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .filter(|_| map.contains_key("targets") || map.contains_key("gridPos"))
                    .unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((file.to_owned(), title.to_owned(), expr.to_owned()));
                }
                for child in map.values() {
                    walk(child, file, title, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, file, title, out);
                }
            }
            _ => {}
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dashboards directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        walk(&json, &file, "", &mut out);
    }
    out.into_iter()
        .map(|(f, t, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("${__rate_interval}", "1m")
                .replace("$__interval", "15s")
                .replace("${__interval}", "15s");
            (f, t, e)
        })
        .collect()
}

/// Evaluate every dashboard expression over `[start, end]`: each must parse and return at
/// least one finite value. Returns the failures, one line each.
pub fn check_dashboards(prometheus: &Prometheus, dir: &Path, start: f64, end: f64) -> Vec<String> {
    let exprs = dashboard_exprs(dir);
    assert!(
        exprs.len() >= 20,
        "{} expressions in {}",
        exprs.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, title, expr) in exprs {
        if !seen.insert(expr.clone()) {
            continue;
        }
        let answer = prometheus.query_range(&expr, start, end, "2s");
        if answer["status"] != "success" {
            failures.push(format!(
                "{file} / {title}: {expr}\n    does not evaluate: {} {}",
                answer["errorType"], answer["error"]
            ));
            continue;
        }
        let finite = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["values"].as_array().into_iter().flatten())
            .filter_map(|v| v[1].as_str()?.parse::<f64>().ok())
            .any(f64::is_finite);
        if !finite {
            failures.push(format!(
                "{file} / {title}: {expr}\n    no data: {}",
                answer["data"]["result"]
            ));
        }
    }
    failures
}

#[test]
fn dashboard_exprs_are_found_with_their_panel_and_macros_replaced() {
    let dir = std::env::temp_dir().join(crate::support::unique("dash"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.json"),
        r#"{"panels": [{"title": "Rate", "gridPos": {}, "targets": [{"expr": "rate(x[$__rate_interval])"}]},
            {"title": "Row", "gridPos": {}, "panels": [{"title": "Inner", "targets": [{"expr": "y"}]}]}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("notes.md"), "not a dashboard").unwrap();
    assert_eq!(
        dashboard_exprs(&dir),
        vec![
            ("a.json".into(), "Rate".into(), "rate(x[1m])".into()),
            ("a.json".into(), "Inner".into(), "y".into()),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_protocol_that_is_not_built_in_is_refused_at_start() {
    // gRPC is not compiled in: a service configured for it says so and exits, rather than
    // silently exporting nothing
    let out = std::process::Command::new(crate::support::workspace_binary("lambdalake-ingest"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("LAMBDALAKE_INGEST_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run lambdalake-ingest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\"") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}
