//! The benchmark report: `report.md`, PNG charts (freshness CDF, throughput over time, accuracy
//! over time) and `report.json` with every figure and series.

use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::compare::{Check, Sample};
use crate::generator::Spec;
use crate::send::Summary;
use crate::truth::{Detection, Percentiles};

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `20261125-143000`, for directory names.
pub fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y%m%d-%H%M%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[derive(Debug, Serialize)]
pub struct FreshnessRow {
    pub path: String,
    pub percentiles: Percentiles,
    /// Probes never seen in this path before the end.
    pub never_seen: u64,
    /// (latency ms, share of probes at or below it), for the chart.
    pub cdf: Vec<(f64, f64)>,
    /// Probe queries (speed path and gold) that failed or were not answered within 2 s: given
    /// up and asked again the next round. Not zero means serving hung or failed on some reads.
    pub failed_queries: u64,
    /// Each probe seen in the load phase, in the order seen: when a tail happened, and whether
    /// the query that saw it was slow.
    pub probes: Vec<ProbeSeen>,
}

/// One probe seen in one path.
#[derive(Debug, Serialize)]
pub struct ProbeSeen {
    /// When ingest acknowledged it, seconds after the bench started.
    pub acked_s: f64,
    /// Acknowledgement → seen through serving, ms.
    pub latency_ms: f64,
    /// How long serving took to answer the query that saw it, ms.
    pub query_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub service: String,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    pub restarts: u32,
    /// Resident memory one minute after the (last) start, and at the end, MiB: growth after
    /// warm-up (runs of at least two minutes).
    pub rss_warm_to_end_mib: Option<(f64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Store {
    pub store: String,
    pub bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Recovery {
    pub service: String,
    /// SIGKILL → an event acknowledged at the kill visible again; `None`: not within the timeout.
    pub catch_up_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Loc {
    pub part: String,
    pub files: usize,
    pub lines: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub run: String,
    pub external: bool,
    pub rate: u64,
    pub load_seconds: f64,
    pub workload: Spec,
    pub sent: Summary,
    pub distinct_events: u64,
    pub fraudulent_payments: u64,
    /// (what, events per second averaged over the load phase).
    pub throughput: Vec<(String, f64)>,
    pub freshness: Vec<FreshnessRow>,
    pub checks: Vec<Check>,
    pub detection: Vec<(String, Detection)>,
    pub processes: Vec<Process>,
    pub storage: Vec<Store>,
    pub recovery: Vec<Recovery>,
    pub lines_of_code: Vec<Loc>,
    pub series: Vec<Sample>,
    pub serving_url: String,
}

/// The CDF points of a latency histogram (ms, share ≤).
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len().max(1) as f64;
    let mut acc = 0u64;
    h.iter_recorded()
        .map(|v| {
            acc += v.count_at_value();
            (
                h.lowest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
                acc as f64 / n,
            )
        })
        .collect()
}

/// Code lines (not blank, not comments, not the test modules at the end of a file) per path.
pub fn lines_of_code(root: &Path) -> Vec<Loc> {
    let parts: [(&str, &[&str]); 4] = [
        (
            "Lambda: speed + batch layers, serving's merge",
            &[
                "services/speed/src",
                "services/batch/src",
                "services/serving/src/windows.rs",
                "services/serving/src/cache.rs",
                "services/serving/src/risk.rs",
            ],
        ),
        (
            "Lakehouse: pipeline, tables, maintenance, serving's gold reader",
            &[
                "services/lakehouse/src",
                "services/serving/src/lakehouse.rs",
            ],
        ),
        (
            "shared by both: ingest, event types, views, Kafka, runtime",
            &[
                "services/ingest/src",
                "shared/events/src",
                "shared/views/src",
                "shared/kafka/src",
                "shared/runtime/src",
            ],
        ),
        (
            "serving (the rest: routes, overview, dashboard)",
            &[
                "services/serving/src/lib.rs",
                "services/serving/src/overview.rs",
                "services/serving/src/stores.rs",
                "services/serving/src/config.rs",
                "services/serving/src/metrics.rs",
                "services/serving/src/main.rs",
            ],
        ),
    ];
    let mut out = Vec::new();
    for (part, paths) in parts {
        let mut files = Vec::new();
        for p in paths {
            collect_rs(&root.join(p), &mut files);
        }
        if files.is_empty() {
            continue;
        }
        let lines = files.iter().map(|f| code_lines(f)).sum();
        out.push(Loc {
            part: part.to_owned(),
            files: files.len(),
            lines,
        });
    }
    out
}

fn collect_rs(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    if p.is_file() {
        if p.extension().is_some_and(|e| e == "rs" || e == "lua") {
            out.push(p.to_owned());
        }
        return;
    }
    if let Ok(entries) = std::fs::read_dir(p) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            // tests.rs / testing.rs are test support
            if e.file_name()
                .is_some_and(|n| n == "tests.rs" || n == "testing.rs" || n == "bench.rs")
            {
                continue;
            }
            collect_rs(&e, out);
        }
    }
}

pub fn code_lines(path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") || t.starts_with("--") {
            continue;
        }
        n += 1;
    }
    n
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("—".to_owned(), |b| {
        format!("{:.1}", b as f64 / 1_048_576.0)
    })
}

fn pct(x: Option<f64>) -> String {
    x.map_or("—".to_owned(), |v| format!("{:.1}%", 100.0 * v))
}

pub fn markdown(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut m = String::new();
    let _ = writeln!(m, "# Lambda vs Lakehouse — benchmark report\n");
    let _ = writeln!(
        m,
        "Run `{}` on {}; {} events/s offered for {:.0} s{}.\n",
        r.run,
        r.machine,
        r.rate,
        r.load_seconds,
        if r.external {
            " against running services"
        } else {
            ", every service a process started by the bench"
        }
    );
    let s = &r.sent;
    let _ = writeln!(
        m,
        "Sent: {} scheduled, {} accepted by ingest ({:.0}/s), {} rejected (malformed), {} failed, {} indeterminate, {} fraud labels; {} distinct events, {} fraudulent payments. Ingest acknowledgement latency from the scheduled send time: p50 {:.1} ms, p99 {:.1} ms.\n",
        s.scheduled,
        s.accepted,
        s.accepted_per_second,
        s.rejected,
        s.failed,
        s.indeterminate,
        s.labels,
        r.distinct_events,
        r.fraudulent_payments,
        s.latency.p50_ms,
        s.latency.p99_ms
    );
    if s.malformed_accepted + s.valid_rejected > 0 {
        let _ = writeln!(
            m,
            "**Ingest disagreed with the generator**: {} malformed events accepted, {} valid events rejected.\n",
            s.malformed_accepted, s.valid_rejected
        );
    }
    let _ = writeln!(m, "## Throughput (events/s, mean over the load phase)\n");
    let _ = writeln!(m, "| path | events/s |\n|---|---:|");
    for (what, v) in &r.throughput {
        let _ = writeln!(m, "| {what} | {v:.0} |");
    }
    let _ = writeln!(m, "\n![throughput](throughput.png)\n");
    let _ = writeln!(
        m,
        "## Freshness: ingest acknowledgement → visible through the serving API\n"
    );
    let _ = writeln!(
        m,
        "| path | probes | p50 | p95 | p99 | max | never seen | queries failed or over 2 s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for f in &r.freshness {
        let p = &f.percentiles;
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} |",
            f.path,
            p.samples,
            p.p50_ms,
            p.p95_ms,
            p.p99_ms,
            p.max_ms,
            f.never_seen,
            f.failed_queries
        );
    }
    let _ = writeln!(m, "\n![freshness](freshness.png)\n");
    let _ = writeln!(
        m,
        "## Correctness: windows exactly equal to the ground truth\n\nA window is judged once nothing was sent for it for the settle time; late events (beyond the watermark) are what the speed layer drops and the batch recompute and the lakehouse's MERGE repair.\n"
    );
    let _ = writeln!(
        m,
        "| when | batch version | Lambda merged view | Lakehouse gold |\n|---|---:|---:|---:|"
    );
    for c in &r.checks {
        let _ = writeln!(
            m,
            "| {} ({:.0} s) | {} | {:.2}% of {} | {:.2}% of {} |",
            c.label,
            c.at_s,
            c.batch_version.map_or("—".to_owned(), |v| v.to_string()),
            100.0 * c.lambda.share(),
            c.lambda.judged,
            100.0 * c.lakehouse.share(),
            c.lakehouse.judged
        );
    }
    // the wrong windows of the last check (after the recompute, both should be exact)
    if let Some(c) = r.checks.last() {
        for (arch, wrong) in [
            ("Lambda", &c.lambda_wrong),
            ("Lakehouse", &c.lakehouse_wrong),
        ] {
            if !wrong.is_empty() {
                let _ = writeln!(m, "\n{arch}, wrong windows {}:\n", c.label);
                for w in wrong {
                    let _ = writeln!(m, "- `{w}`");
                }
            }
        }
    }
    let _ = writeln!(m, "\n![accuracy](accuracy.png)\n");
    let _ = writeln!(m, "## Fraud detection (alerts at score ≥ 0.8)\n");
    let _ = writeln!(
        m,
        "| path | flagged | true positives | frauds | precision | recall |\n|---|---:|---:|---:|---:|---:|"
    );
    for (path, d) in &r.detection {
        let _ = writeln!(
            m,
            "| {path} | {} | {} | {} | {} | {} |",
            d.flagged,
            d.true_positives,
            d.frauds,
            pct(d.precision),
            pct(d.recall)
        );
    }
    let _ = writeln!(
        m,
        "\nThe speed layer scores with the batch layer's card profiles and model once a version has them (amount spikes and new countries need a profile); the lakehouse scores with the rules and the card's history only.\n"
    );
    if !r.processes.is_empty() {
        let _ = writeln!(
            m,
            "## Cost per service (from /proc)\n\n| service | CPU seconds | peak RSS | RSS at 1 min → end | restarts |\n|---|---:|---:|---:|---:|"
        );
        for p in &r.processes {
            let growth = p.rss_warm_to_end_mib.map_or("–".to_owned(), |(w, e)| {
                format!(
                    "{w:.0} → {e:.0} MiB ({:+.0} %)",
                    (e - w) / w.max(1.0) * 100.0
                )
            });
            let _ = writeln!(
                m,
                "| {} | {:.1} | {:.0} MiB | {growth} | {} |",
                p.service, p.cpu_seconds, p.peak_rss_mib, p.restarts
            );
        }
        let cpu = |names: &[&str]| -> f64 {
            r.processes
                .iter()
                .filter(|p| names.contains(&p.service.as_str()))
                .map(|p| p.cpu_seconds)
                .sum()
        };
        let _ = writeln!(
            m,
            "\nLambda's own processes (speed + batch): {:.1} CPU s; the Lakehouse's (lakehouse): {:.1} CPU s; shared (ingest, serving): {:.1} CPU s.\n",
            cpu(&["speed", "batch"]),
            cpu(&["lakehouse"]),
            cpu(&["ingest", "serving"])
        );
    }
    let _ = writeln!(m, "## Storage\n\n| store | MiB |\n|---|---:|");
    for s in &r.storage {
        let _ = writeln!(m, "| {} | {} |", s.store, mib(s.bytes));
    }
    let _ = writeln!(m, "\nKafka's log is shared by both and not counted.\n");
    if !r.recovery.is_empty() {
        let _ = writeln!(
            m,
            "## Recovery after a SIGKILL under load\n\nTime from the kill (the service restarted at once) until an event acknowledged at the kill is visible through serving.\n\n| service | catch-up |\n|---|---:|"
        );
        for rc in &r.recovery {
            let _ = writeln!(
                m,
                "| {} | {} |",
                rc.service,
                rc.catch_up_seconds
                    .map_or("not within the timeout".to_owned(), |s| format!("{s:.2} s"))
            );
        }
        m.push('\n');
    }
    if !r.lines_of_code.is_empty() {
        let _ = writeln!(
            m,
            "## Complexity: lines of code (no blank, comment or test lines)\n\n| part | files | lines |\n|---|---:|---:|"
        );
        for l in &r.lines_of_code {
            let _ = writeln!(m, "| {} | {} | {} |", l.part, l.files, l.lines);
        }
        m.push('\n');
    }
    let _ = writeln!(
        m,
        "Raw figures and series: `report.json`. Dashboard: {}/",
        r.serving_url
    );
    m
}

/// A TrueType font for the charts' text: the first one found among common system fonts.
fn font() -> Option<&'static [u8]> {
    const CANDIDATES: [&str; 5] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ];
    let bytes = CANDIDATES.iter().find_map(|p| std::fs::read(p).ok())?;
    Some(Vec::leak(bytes))
}

type Line = (String, RGBColor, Vec<(f64, f64)>);

fn chart(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    lines: &[Line],
    y_max: Option<f64>,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max)
        .max(1e-3);
    let y_top = y_max.unwrap_or_else(|| {
        lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max)
            .max(1e-3)
            * 1.1
    });
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_top)?;
    c.configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, color, points) in lines {
        let color = *color;
        c.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

const BLUE_: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN_: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// `report.md`, `report.json` and the charts into `dir`.
pub fn write(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    let Some(font) = font() else {
        eprintln!(
            "no TrueType font found (apt-get install fonts-dejavu-core): the report has no charts"
        );
        return Ok(());
    };
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font cannot be read"))?;
    let colors = [BLUE_, ORANGE, GREEN_];
    let fresh: Vec<Line> = r
        .freshness
        .iter()
        .zip(colors)
        .filter(|(f, _)| !f.cdf.is_empty())
        .map(|(f, c)| {
            (
                f.path.clone(),
                c,
                f.cdf.iter().map(|(ms, q)| (ms / 1000.0, *q)).collect(),
            )
        })
        .collect();
    chart(
        &dir.join("freshness.png"),
        "Freshness: acknowledgement → visible (CDF)",
        "seconds",
        "share of probes",
        &fresh,
        Some(1.0),
    )?;
    let series = |f: fn(&Sample) -> f64| r.series.iter().map(|s| (s.at_s, f(s))).collect();
    chart(
        &dir.join("throughput.png"),
        "Throughput over time",
        "seconds since start",
        "events/s",
        &[
            (
                "accepted by ingest".to_owned(),
                GREY,
                series(|s| s.accepted),
            ),
            ("Lambda speed layer".to_owned(), BLUE_, series(|s| s.speed)),
            (
                "Lakehouse bronze".to_owned(),
                GREEN_,
                series(|s| s.lakehouse),
            ),
            ("Lambda archiver".to_owned(), ORANGE, series(|s| s.archiver)),
        ],
        None,
    )?;
    let acc = |f: fn(&Check) -> f64| r.checks.iter().map(|c| (c.at_s, 100.0 * f(c))).collect();
    chart(
        &dir.join("accuracy.png"),
        "Windows exactly right over time",
        "seconds since start",
        "% of judged windows",
        &[
            (
                "Lambda merged view".to_owned(),
                BLUE_,
                acc(|c| c.lambda.share()),
            ),
            (
                "Lakehouse gold".to_owned(),
                GREEN_,
                acc(|c| c.lakehouse.share()),
            ),
        ],
        Some(100.5),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_lines_skip_blank_comments_and_tests() {
        let dir = std::env::temp_dir().join(format!("loc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.rs");
        std::fs::write(
            &f,
            "//! doc\n\nfn a() {\n    // c\n    1;\n}\n#[cfg(test)]\nmod tests { fn t() {} }\n",
        )
        .unwrap();
        assert_eq!(code_lines(&f), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cdf_reaches_one() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [1000, 2000, 2000, 4000] {
            h.record(v).unwrap();
        }
        let c = cdf(&h);
        assert_eq!(c.first().unwrap().1, 0.25);
        assert_eq!(c.last().unwrap(), &(4.0, 1.0));
    }
}
