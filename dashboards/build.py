#!/usr/bin/env python3
"""Generate the Grafana dashboards of lambdalake and dashboards/METRICS.md.

    python3 dashboards/build.py        # rewrites overview.json, lambda.json, lakehouse.json,
                                       # comparison.json and METRICS.md next to this file

The JSON files are what Grafana provisions (file provider; datasource uid `prometheus`). Edit this
script rather than the JSON, then run it again. `exprs.py` lists every query for review and checks
the metric and label names against `services/*/src/metrics.rs`.

Rules the queries follow (a test evaluates every `expr` against a Prometheus that scraped a short
end-to-end run): only the `$__rate_interval` macro, no dashboard variables, no conditional
filters (`> 0`, `unless`, `absent`), every query returns data as soon as its metric exists.
"""

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "prometheus"}
R = "$__rate_interval"
JOBS = 'up{job=~"ingest|speed|batch|serving|lakehouse"}'

DASHBOARDS = [
    ("lambdalake-overview", "overview.json", "lambdalake · Overview"),
    ("lambdalake-lambda", "lambda.json", "lambdalake · Lambda (speed, batch, serving)"),
    ("lambdalake-lakehouse", "lakehouse.json", "lambdalake · Lakehouse (Delta bronze/silver/gold)"),
    ("lambdalake-comparison", "comparison.json", "lambdalake · Lambda vs Lakehouse"),
]


# --- query helpers ---------------------------------------------------------------------------

def rate(metric, by=None, sel=""):
    inner = f"rate({metric}{{{sel}}}[{R}])" if sel else f"rate({metric}[{R}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, by=None, sel=""):
    """histogram_quantile over `<metric>_bucket`, grouped by `le` (and `by`)."""
    labels = f"le, {by}" if by else "le"
    series = f"{metric}_bucket{{{sel}}}" if sel else f"{metric}_bucket"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({series}[{R}])))"


def target(expr, legend, ref):
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "instant": False,
        "refId": ref,
    }


# --- panels ----------------------------------------------------------------------------------

def panel(kind, title, desc, unit, queries, w=12, h=8, **extra):
    """A panel without position; `queries` is a list of (expr, legend)."""
    return {
        "kind": kind,
        "title": title,
        "description": desc,
        "unit": unit,
        "queries": queries,
        "w": w,
        "h": h,
        **extra,
    }


def ts(title, desc, unit, queries, w=12, h=8, **extra):
    return panel("timeseries", title, desc, unit, queries, w, h, **extra)


def stat(title, desc, unit, queries, w=6, h=4, **extra):
    return panel("stat", title, desc, unit, queries, w, h, **extra)


def render(p, pid, x, y):
    targets = [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(p["queries"])]
    defaults = {"unit": p["unit"]}
    if "decimals" in p:
        defaults["decimals"] = p["decimals"]
    if p.get("min0"):
        defaults["min"] = 0
    if p["kind"] == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineInterpolation": "linear",
            "lineWidth": 1,
            "fillOpacity": 10,
            "gradientMode": "none",
            "showPoints": "never",
            "spanNulls": False,
            "axisPlacement": "auto",
            "axisSoftMin": 0,
            "stacking": {"mode": "none", "group": "A"},
            "thresholdsStyle": {"mode": "off"},
        }
        defaults["color"] = {"mode": "palette-classic"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}],
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = p.get(
            "thresholds", {"mode": "absolute", "steps": [{"color": "blue", "value": None}]}
        )
        if "mappings" in p:
            defaults["mappings"] = p["mappings"]
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": p.get("colorMode", "value"),
            "graphMode": p.get("graphMode", "area"),
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": p.get("textMode", "auto"),
            "wideLayout": True,
            "showPercentChange": False,
        }
    return {
        "id": pid,
        "type": p["kind"],
        "title": p["title"],
        "description": p["description"],
        "datasource": DS,
        "gridPos": {"h": p["h"], "w": p["w"], "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def layout(rows):
    """Rows of panels, left to right; each row starts below the tallest panel of the previous."""
    out, y, pid = [], 0, 1
    for row in rows:
        x = 0
        assert sum(p["w"] for p in row) <= 24, [p["title"] for p in row]
        for p in row:
            out.append(render(p, pid, x, y))
            pid += 1
            x += p["w"]
        y += max(p["h"] for p in row)
    return out


def dashboard(uid, title, description, rows):
    links = [
        {
            "title": t.split(" · ", 1)[1].split(" (")[0],
            "type": "link",
            "url": f"/d/{u}",
            "icon": "dashboard",
            "tooltip": t,
            "targetBlank": False,
            "keepTime": True,
            "includeVars": False,
            "asDropdown": False,
            "tags": [],
        }
        for u, _, t in DASHBOARDS
        if u != uid
    ]
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": links,
        "panels": layout(rows),
        "refresh": "5s",
        "schemaVersion": 39,
        "tags": ["lambdalake"],
        "templating": {"list": []},
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "down", "color": "red", "index": 0},
            "1": {"text": "up", "color": "green", "index": 1},
        },
    }
]
UP_THRESHOLDS = {
    "mode": "absolute",
    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
}

# common expressions
SPEED_CONSUMED = rate("lambdalake_speed_events_total")
LAKE_BRONZE = rate("lambdalake_lakehouse_rows_total", sel='table="bronze"')
LAKE_INTERVAL = (
    "1 / " + rate("lambdalake_lakehouse_commits_total", sel='table="bronze", outcome="ok"')
)
LAKE_BATCH_COMMIT_TIME = (
    f"sum(rate(lambdalake_lakehouse_commit_duration_seconds_sum[{R}])) / "
    f'sum(rate(lambdalake_lakehouse_commit_duration_seconds_count{{table="bronze"}}[{R}]))'
)
LAMBDA_ROUTES = 'route=~"/v1/lambda/.*|/v1/alerts"'
LAKE_ROUTES = 'route=~"/v1/lakehouse/.*"'
SERVING_LAT = "lambdalake_serving_request_duration_seconds"


# --- overview --------------------------------------------------------------------------------

overview = [
    [
        stat(
            "Services up",
            "Prometheus `up` for each service's /metrics (1 = the last scrape succeeded): ingest, "
            "speed and batch layers, serving, lakehouse.",
            "short",
            [(JOBS, "{{job}} {{instance}}")],
            w=10,
            mappings=UP_MAPPINGS,
            thresholds=UP_THRESHOLDS,
            colorMode="background",
            graphMode="none",
        ),
        stat(
            "Ingest accepted events/s",
            "Events acknowledged by the broker per second, all kinds: what enters both architectures.",
            "ops",
            [(rate("lambdalake_ingest_events_total", sel='outcome="accepted"'), "accepted")],
            w=5,
        ),
        stat(
            "Batch version",
            "The last batch version the batch layer published to Postgres (Lambda layers: each "
            "recompute is a new immutable version the serving layer switches to).",
            "short",
            [("max(lambdalake_batch_version)", "version")],
            w=3,
            graphMode="none",
        ),
        stat(
            "Speed consumer lag",
            "Records in Kafka the speed layer has not read into a micro-batch yet, all partitions.",
            "short",
            [("sum(lambdalake_speed_consumer_lag)", "records")],
            w=3,
        ),
        stat(
            "Batch cutoff age",
            "Wall clock minus the event-time cutoff of the last batch version: the span the speed "
            "layer must cover on its own (Lambda layers).",
            "s",
            [("time() - max(lambdalake_batch_cutoff_seconds)", "age")],
            w=3,
        ),
    ],
    [
        ts(
            "Ingest events/s by kind and outcome",
            "Events per second received by ingest: accepted (acknowledged by Kafka), rejected "
            "(invalid) and failed (valid but not persisted: producer queue full or broker down).",
            "ops",
            [(rate("lambdalake_ingest_events_total", "kind, outcome"), "{{kind}} {{outcome}}")],
            min0=True,
        ),
        ts(
            "Ingest rejections/s by reason",
            "Events (or whole requests) rejected by validation per second, by error code "
            "(invalid_value, missing_field, future_timestamp, too_large, …) and kind.",
            "ops",
            [(rate("lambdalake_ingest_rejections_total", "kind, reason"), "{{kind}} {{reason}}")],
            min0=True,
        ),
    ],
    [
        ts(
            "Request latency p99",
            "99th percentile of request duration: ingest by kind (body read to broker "
            "acknowledgement) and serving by route pattern (the /metrics line is Prometheus's scrape).",
            "s",
            [
                (
                    quantile(0.99, "lambdalake_ingest_request_duration_seconds", "kind"),
                    "ingest {{kind}}",
                ),
                (quantile(0.99, SERVING_LAT, "route"), "serving {{route}}"),
            ],
        ),
        ts(
            "Ingest requests/s by status",
            "Ingest HTTP answers per second by kind and status; 429 and 503 are back-pressure "
            "(producer queue full, broker not acknowledging in time).",
            "ops",
            [(rate("lambdalake_ingest_requests_total", "kind, status"), "{{kind}} {{status}}")],
            min0=True,
        ),
    ],
    [
        ts(
            "Producer queue depth",
            "Messages in ingest's Kafka producer queue not yet acknowledged by the broker; near "
            "the queue size ingest answers 429.",
            "short",
            [("sum by (instance) (lambdalake_ingest_producer_queue_depth)", "ingest {{instance}}")],
            w=8,
            min0=True,
        ),
        ts(
            "Consumer lag",
            "Records not yet processed, by topic and consumer group (summed over partitions): "
            "read into a micro-batch for the speed layer, committed to every table for the "
            "lakehouse.",
            "short",
            [
                ("sum by (topic) (lambdalake_speed_consumer_lag)", "speed {{topic}}"),
                ("sum by (topic) (lambdalake_lakehouse_consumer_lag)", "lakehouse {{topic}}"),
            ],
            w=8,
            min0=True,
        ),
        ts(
            "Records processed/s: speed vs lakehouse",
            "Kafka records consumed per second by the speed layer (all outcomes) and appended to "
            "the lakehouse's bronze table (all topics, fraud labels included).",
            "ops",
            [(SPEED_CONSUMED, "speed layer"), (LAKE_BRONZE, "lakehouse bronze")],
            w=8,
            min0=True,
        ),
    ],
    [
        ts(
            "Alerts/s",
            "Alerts raised per second: by the speed layer by kind (fraud, sensor), and rows "
            "appended to the lakehouse's gold_alerts table (fraud and sensor together).",
            "ops",
            [
                (rate("lambdalake_speed_alerts_total", "kind"), "speed {{kind}}"),
                (
                    rate("lambdalake_lakehouse_rows_total", sel='table="gold_alerts"'),
                    "lakehouse gold_alerts",
                ),
            ],
            min0=True,
        ),
        ts(
            "Freshness: speed window p99 vs lakehouse micro-batch",
            "How fast results become visible: speed layer Kafka timestamp to Redis window (p99) vs "
            "the lakehouse's interval between micro-batches and commit time per micro-batch.",
            "s",
            [
                (quantile(0.99, "lambdalake_speed_window_freshness_seconds"), "speed freshness p99"),
                (LAKE_INTERVAL, "lakehouse interval between micro-batches"),
                (LAKE_BATCH_COMMIT_TIME, "lakehouse commit time per micro-batch"),
            ],
        ),
    ],
]


# --- Lambda ----------------------------------------------------------------------------------

lambda_rows = [
    # speed layer
    [
        ts(
            "Speed · records/s by topic and outcome",
            "Records the speed layer consumed per second: applied to the Redis views, duplicate "
            "(event id already counted: exactly-once), late (behind the watermark) or invalid.",
            "ops",
            [(rate("lambdalake_speed_events_total", "topic, outcome"), "{{topic}} {{outcome}}")],
            min0=True,
            w=8,
        ),
        ts(
            "Speed · delivery: records skipped / read again at an assignment",
            "Outside exactly-once (--delivery at-most-once / at-least-once), a restarted or "
            "reassigned partition starts at the group's offset committed to Kafka: records past "
            "the views' stored offset are skipped (lost, at-most-once), records before it are read "
            "again (at-least-once; the event-id dedupe then drops them). Always 0 with exactly-once.",
            "short",
            [(
                "sum by (topic, outcome) (increase(lambdalake_speed_resumed_records_total[$__rate_interval]))",
                "{{topic}} {{outcome}}",
            )],
            min0=True,
            w=8,
        ),
        ts(
            "Speed · micro-batch apply duration p50/p99",
            "From the start of a micro-batch to one partition's share applied in Redis (planning, "
            "side outputs, the apply script): the cost of one trigger/micro-batch.",
            "s",
            [
                (quantile(0.5, "lambdalake_speed_apply_duration_seconds"), "p50"),
                (quantile(0.99, "lambdalake_speed_apply_duration_seconds"), "p99"),
            ],
            w=8,
        ),
    ],
    [
        ts(
            "Speed · Redis write latency p50/p99",
            "Latency of one partition's atomic Lua apply script, which stores the views and the "
            "Kafka offset together (exactly-once without Kafka transactions).",
            "s",
            [
                (quantile(0.5, "lambdalake_speed_redis_write_duration_seconds"), "p50"),
                (quantile(0.99, "lambdalake_speed_redis_write_duration_seconds"), "p99"),
            ],
            w=8,
        ),
        ts(
            "Speed · records per micro-batch p50/p99",
            "Records in one micro-batch: small under light load, larger as the consumer catches up "
            "(trigger/micro-batch).",
            "short",
            [
                (quantile(0.5, "lambdalake_speed_batch_records"), "p50"),
                (quantile(0.99, "lambdalake_speed_batch_records"), "p99"),
            ],
            w=8,
        ),
        ts(
            "Speed · watermark delay by topic",
            "Wall clock minus the speed layer's event-time watermark (max event time minus the "
            "allowed lateness): events older than the watermark are late.",
            "s",
            [("max by (topic) (lambdalake_speed_watermark_delay_seconds)", "{{topic}}")],
            w=8,
        ),
    ],
    [
        ts(
            "Speed · window freshness p50/p99 by topic",
            "Time from a record's Kafka timestamp to its window being updated in Redis: how fresh "
            "the speed layer's real-time views are.",
            "s",
            [
                (quantile(0.5, "lambdalake_speed_window_freshness_seconds", "topic"), "p50 {{topic}}"),
                (quantile(0.99, "lambdalake_speed_window_freshness_seconds", "topic"), "p99 {{topic}}"),
            ],
            w=8,
        ),
        ts(
            "Speed · late events/s by topic",
            "Events behind the watermark per second, routed to the late-events topic instead of the "
            "Redis views; the batch layer still counts them (watermark and late data).",
            "ops",
            [(rate("lambdalake_speed_late_events_total", "topic"), "{{topic}}")],
            w=8,
            min0=True,
        ),
        ts(
            "Speed · lateness p50/p99 by topic",
            "How far behind the watermark late events were (watermark and late data).",
            "s",
            [
                (quantile(0.5, "lambdalake_speed_lateness_seconds", "topic"), "p50 {{topic}}"),
                (quantile(0.99, "lambdalake_speed_lateness_seconds", "topic"), "p99 {{topic}}"),
            ],
            w=8,
        ),
    ],
    [
        ts(
            "Speed · consumer lag per partition",
            "High watermark minus the next offset the speed layer will read, per topic and partition.",
            "short",
            [
                (
                    "sum by (topic, partition) (lambdalake_speed_consumer_lag)",
                    "{{topic}}/{{partition}}",
                )
            ],
            w=8,
            min0=True,
        ),
        ts(
            "Speed · rebalances/s",
            "Consumer-group partition assignments and revocations per second (scaling out with "
            "--scale speed=N, restarts).",
            "ops",
            [(rate("lambdalake_speed_rebalances_total", "kind"), "{{kind}}")],
            w=8,
            min0=True,
        ),
        ts(
            "Speed · apply retries/s by reason",
            "Micro-batch partitions not applied at the first try: skip/mismatch (a stale plan after "
            "a rebalance, re-read from the stored offset: exactly-once), Redis or Kafka errors.",
            "ops",
            [(rate("lambdalake_speed_apply_retries_total", "reason"), "{{reason}}")],
            w=8,
            min0=True,
        ),
    ],
    [
        ts(
            "Speed · alerts/s by kind",
            "Fraud and sensor alerts the speed layer raised per second (written to Redis and the "
            "alerts topic).",
            "ops",
            [(rate("lambdalake_speed_alerts_total", "kind"), "{{kind}}")],
            w=16,
            min0=True,
        ),
        stat(
            "Speed · fraud model in use",
            "The fraud model version the speed layer scores with: `rules` until the batch layer "
            "publishes a trained model (Lambda layers: batch feeds the speed layer).",
            "short",
            [("max by (version) (lambdalake_speed_fraud_model)", "{{version}}")],
            w=8,
            h=8,
            textMode="name",
            graphMode="none",
        ),
    ],
    # batch layer
    [
        stat(
            "Batch · version",
            "The last batch version published to Postgres; the serving layer reads batch views "
            "of this version (Lambda layers).",
            "short",
            [("max(lambdalake_batch_version)", "version")],
            graphMode="none",
        ),
        stat(
            "Batch · cutoff age",
            "Wall clock minus the event-time cutoff of the last version: windows after the cutoff "
            "are served from the speed layer, before it from the batch layer.",
            "s",
            [("time() - max(lambdalake_batch_cutoff_seconds)", "age")],
        ),
        stat(
            "Batch · runs by outcome",
            "Batch recompute runs since the service started, published or failed.",
            "short",
            [("sum by (outcome) (lambdalake_batch_runs_total)", "{{outcome}}")],
            graphMode="none",
        ),
        stat(
            "Batch · reference publications by outcome",
            "Publications of card profiles, device baselines and the fraud model to Redis for the "
            "speed layer since start, written or failed.",
            "short",
            [("sum by (outcome) (lambdalake_batch_reference_publications_total)", "{{outcome}}")],
            graphMode="none",
        ),
    ],
    [
        ts(
            "Batch · recompute run duration",
            "Duration of a full recompute (scan the master dataset, aggregate with Polars, train, "
            "publish): p50/p99 over the interval and the mean since start (batch layer recomputes "
            "everything).",
            "s",
            [
                (quantile(0.5, "lambdalake_batch_run_duration_seconds"), "p50"),
                (quantile(0.99, "lambdalake_batch_run_duration_seconds"), "p99"),
                (
                    "sum(lambdalake_batch_run_duration_seconds_sum) / "
                    "sum(lambdalake_batch_run_duration_seconds_count)",
                    "mean since start",
                ),
            ],
            w=8,
        ),
        ts(
            "Batch · runs/s by outcome",
            "Batch recompute runs per second, published or failed.",
            "ops",
            [(rate("lambdalake_batch_runs_total", "outcome"), "{{outcome}}")],
            w=8,
            min0=True,
        ),
        ts(
            "Batch · rows scanned by the last run",
            "Rows of the master dataset the last run scanned: it grows with the data, because the "
            "batch layer recomputes every view from all of it (Lambda layers).",
            "short",
            [("max(lambdalake_batch_rows_scanned)", "rows scanned")],
            w=8,
        ),
    ],
    [
        ts(
            "Batch · archived events/s by kind",
            "Records appended to the immutable Parquet master dataset per second, by kind "
            "(sensor_reading, payment, fraud_label, invalid).",
            "ops",
            [(rate("lambdalake_batch_archived_events_total", "kind"), "{{kind}}")],
            w=8,
            min0=True,
        ),
        ts(
            "Batch · archiver flush latency p50/p99",
            "Time to write one partition's buffered records to Parquet and commit its manifest "
            "with the Kafka offsets (exactly-once archiving).",
            "s",
            [
                (quantile(0.5, "lambdalake_batch_archiver_flush_duration_seconds"), "p50"),
                (quantile(0.99, "lambdalake_batch_archiver_flush_duration_seconds"), "p99"),
            ],
            w=8,
        ),
        ts(
            "Batch · archiver files and compactions/s",
            "Parquet files committed to the master dataset per second, and small files merged by "
            "compaction per second (the small-files problem, like Delta OPTIMIZE).",
            "ops",
            [
                (rate("lambdalake_batch_archiver_files_total"), "files committed"),
                (rate("lambdalake_batch_archiver_compacted_files_total"), "files compacted"),
            ],
            w=8,
            min0=True,
        ),
    ],
    [
        ts(
            "Batch · fraud model quality",
            "Precision, recall and AUC of the last trained fraud model on its held-out split "
            "(NaN while undefined).",
            "short",
            [("max by (measure) (lambdalake_batch_model_quality)", "{{measure}}")],
            decimals=3,
        ),
        ts(
            "Batch · reference publications/s by outcome",
            "Publications of profiles, baselines and the model to Redis per second, written or "
            "failed (the batch layer feeding the speed layer).",
            "ops",
            [(rate("lambdalake_batch_reference_publications_total", "outcome"), "{{outcome}}")],
            min0=True,
        ),
    ],
    # serving
    [
        ts(
            "Serving · requests/s by route and status",
            "Answers of the serving API per second by route pattern and HTTP status (/metrics is "
            "Prometheus's own scrape).",
            "ops",
            [(rate("lambdalake_serving_requests_total", "route, status"), "{{route}} {{status}}")],
            min0=True,
        ),
        ts(
            "Serving · request latency p99 by route",
            "99th percentile time to answer, by route pattern: Lambda routes merge the batch view "
            "(Postgres) and the speed view (Redis) on the batch cutoff.",
            "s",
            [(quantile(0.99, SERVING_LAT, "route"), "{{route}}")],
        ),
    ],
    [
        ts(
            "Serving · batch cache hits/misses per second",
            "Batch-window reads answered from the serving layer's cache (hit) or Postgres (miss); "
            "batch views are immutable per version, so they cache well.",
            "ops",
            [(rate("lambdalake_serving_batch_cache_total", "result"), "{{result}}")],
            min0=True,
        ),
        ts(
            "Serving · degraded answers/s by missing store",
            "Answers given without one of the stores (batch = Postgres, speed = Redis, kafka, gold "
            "= Delta tables): the serving layer degrades instead of failing.",
            "ops",
            [(rate("lambdalake_serving_degraded_total", "store"), "{{store}}")],
            min0=True,
        ),
    ],
]


# --- Lakehouse -------------------------------------------------------------------------------

lakehouse_rows = [
    [
        ts(
            "Commits/s by table",
            "Successful Delta commits per second, by table: each micro-batch commits bronze, then "
            "silver, then gold, each commit a new table version (Delta commits/MVCC).",
            "ops",
            [(rate("lambdalake_lakehouse_commits_total", "table", 'outcome="ok"'), "{{table}}")],
            min0=True,
        ),
        ts(
            "Failed commits/s by table and outcome",
            "Commits that failed per second: conflict (another writer committed first: optimistic "
            "concurrency, the batch is re-read from the offsets in the table) or error.",
            "ops",
            [
                (
                    rate("lambdalake_lakehouse_commits_total", "table, outcome", 'outcome!="ok"'),
                    "{{table}} {{outcome}}",
                )
            ],
            min0=True,
        ),
    ],
    [
        ts(
            "Commit latency p99 by table",
            "99th percentile time to write one micro-batch to one Delta table and commit it (gold: "
            "a MERGE of the windows the new events touch).",
            "s",
            [(quantile(0.99, "lambdalake_lakehouse_commit_duration_seconds", "table"), "{{table}}")],
        ),
        ts(
            "Commit latency p50 by table",
            "Median time to write one micro-batch to one Delta table and commit it (Delta commits).",
            "s",
            [(quantile(0.5, "lambdalake_lakehouse_commit_duration_seconds", "table"), "{{table}}")],
        ),
    ],
    [
        ts(
            "Rows/s by table",
            "Rows written per second: bronze every record, silver the new valid events, gold the "
            "windows inserted or updated by MERGE, the fraud scores and the alerts.",
            "ops",
            [(rate("lambdalake_lakehouse_rows_total", "table"), "{{table}}")],
            min0=True,
            w=8,
        ),
        ts(
            "Table versions",
            "The latest Delta version of each table: one version per commit, readable by time "
            "travel (Delta commits/MVCC).",
            "short",
            [("max by (table) (lambdalake_lakehouse_table_version)", "{{table}}")],
            w=8,
        ),
        ts(
            "Consumer lag by partition",
            "Records of each partition not committed to every table yet: the high watermark minus "
            "the offsets the tables' txn actions recorded (exactly-once: offsets stored with the "
            "results).",
            "short",
            [
                (
                    "sum by (topic, partition) (lambdalake_lakehouse_consumer_lag)",
                    "{{topic}}/{{partition}}",
                )
            ],
            min0=True,
            w=8,
        ),
    ],
    [
        ts(
            "Micro-batch interval and commit time",
            "Seconds between two bronze commits (the effective trigger) and the mean time one "
            "micro-batch spends committing all its tables (trigger/micro-batch).",
            "s",
            [
                (LAKE_INTERVAL, "interval between micro-batches"),
                (LAKE_BATCH_COMMIT_TIME, "commit time per micro-batch (all tables)"),
            ],
            w=8,
        ),
        ts(
            "Dropped rows/s by reason",
            "Records kept in bronze only, per second, by topic and reason: duplicate (event id "
            "already in silver: exactly-once) or invalid; late events are never dropped.",
            "ops",
            [(rate("lambdalake_lakehouse_dropped_total", "topic, reason"), "{{topic}} {{reason}}")],
            w=8,
            min0=True,
        ),
        stat(
            "Maintenance operations by outcome",
            "OPTIMIZE (compacts small files) and VACUUM (deletes files older than the retention) "
            "runs since start, by outcome; checkpoints are written by the commits and not counted.",
            "short",
            [
                (
                    "sum by (operation, outcome) (lambdalake_lakehouse_maintenance_total)",
                    "{{operation}} {{outcome}}",
                )
            ],
            w=8,
            h=8,
            graphMode="none",
        ),
    ],
    [
        ts(
            "Maintenance operations/s by outcome",
            "OPTIMIZE and VACUUM operations (one per table) per second, by outcome, run between "
            "micro-batches while streaming (VACUUM/OPTIMIZE).",
            "ops",
            [
                (
                    rate("lambdalake_lakehouse_maintenance_total", "operation, outcome"),
                    "{{operation}} {{outcome}}",
                )
            ],
            min0=True,
        ),
        ts(
            "Records into the lakehouse vs into silver",
            "Records appended to bronze per second next to the valid, new events appended to the "
            "silver tables (medallion: bronze raw, silver cleaned and deduplicated).",
            "ops",
            [
                (LAKE_BRONZE, "bronze"),
                (
                    rate("lambdalake_lakehouse_rows_total", sel='table=~"silver_.*"'),
                    "silver (all tables)",
                ),
            ],
            min0=True,
        ),
    ],
]


# --- comparison ------------------------------------------------------------------------------

comparison_rows = [
    [
        stat(
            "Speed window freshness p99",
            "Lambda speed layer: 99th percentile from Kafka timestamp to window updated in Redis.",
            "s",
            [(quantile(0.99, "lambdalake_speed_window_freshness_seconds"), "speed p99")],
        ),
        stat(
            "Lakehouse micro-batch interval",
            "Lakehouse: seconds between two bronze commits, the trigger that bounds its freshness.",
            "s",
            [(LAKE_INTERVAL, "interval")],
        ),
        stat(
            "Serving p99: Lambda routes",
            "99th percentile latency of /v1/lambda/… and /v1/alerts (Redis + Postgres merged on the "
            "batch cutoff).",
            "s",
            [(quantile(0.99, SERVING_LAT, sel=LAMBDA_ROUTES), "lambda p99")],
        ),
        stat(
            "Serving p99: lakehouse routes",
            "99th percentile latency of /v1/lakehouse/… (gold Delta tables read with time travel).",
            "s",
            [(quantile(0.99, SERVING_LAT, sel=LAKE_ROUTES), "lakehouse p99")],
        ),
    ],
    [
        ts(
            "Records consumed/s: speed vs lakehouse",
            "Kafka records read per second by the speed layer and the batch archiver (Lambda) and "
            "appended to bronze (Lakehouse; bronze also holds the fraud labels).",
            "ops",
            [
                (SPEED_CONSUMED, "Lambda speed layer"),
                (rate("lambdalake_batch_archived_events_total"), "Lambda batch archiver"),
                (LAKE_BRONZE, "Lakehouse bronze"),
            ],
            min0=True,
        ),
        ts(
            "New valid events counted/s: speed vs lakehouse",
            "Events per second that entered the views exactly once: applied by the speed layer, "
            "appended to the lakehouse's silver readings and payments tables.",
            "ops",
            [
                (
                    rate("lambdalake_speed_events_total", sel='outcome="applied"'),
                    "Lambda speed applied",
                ),
                (
                    rate(
                        "lambdalake_lakehouse_rows_total",
                        sel='table=~"silver_sensor_readings|silver_payments"',
                    ),
                    "Lakehouse silver",
                ),
            ],
            min0=True,
        ),
    ],
    [
        ts(
            "Freshness: speed windows vs lakehouse micro-batches",
            "Speed: Kafka timestamp to Redis window p50/p99; Lakehouse: interval between "
            "micro-batches (trigger), time to commit one micro-batch and gold commit p99.",
            "s",
            [
                (quantile(0.5, "lambdalake_speed_window_freshness_seconds"), "speed freshness p50"),
                (quantile(0.99, "lambdalake_speed_window_freshness_seconds"), "speed freshness p99"),
                (LAKE_INTERVAL, "lakehouse interval between micro-batches"),
                (LAKE_BATCH_COMMIT_TIME, "lakehouse commit time per micro-batch"),
                (
                    quantile(
                        0.99,
                        "lambdalake_lakehouse_commit_duration_seconds",
                        sel='table=~"gold_.*"',
                    ),
                    "lakehouse gold commit p99",
                ),
            ],
        ),
        ts(
            "Write latency p99: Redis script, Parquet flush, Delta commit",
            "The cost of exactly-once in each path: the speed layer's atomic Redis script (views and "
            "offsets together), the archiver's Parquet flush, a Delta commit with its txn offsets.",
            "s",
            [
                (quantile(0.99, "lambdalake_speed_redis_write_duration_seconds"), "speed Redis script"),
                (quantile(0.99, "lambdalake_batch_archiver_flush_duration_seconds"), "batch archiver flush"),
                *[
                    (
                        quantile(0.99, "lambdalake_lakehouse_commit_duration_seconds", sel=sel),
                        f"lakehouse {layer} commit",
                    )
                    for layer, sel in [
                        ("bronze", 'table="bronze"'),
                        ("silver", 'table=~"silver_.*"'),
                        ("gold", 'table=~"gold_.*"'),
                    ]
                ],
            ],
        ),
    ],
    [
        ts(
            "Late events: routed out by speed, merged by the lakehouse",
            "Events/s the live views leave out: speed late events (behind the watermark, counted "
            "later by the batch layer), duplicates and invalid ones, vs lakehouse drops, which are "
            "only duplicates and invalid ones because MERGE lets late events correct gold windows.",
            "ops",
            [
                (rate("lambdalake_speed_late_events_total"), "speed late (to batch)"),
                (
                    rate("lambdalake_speed_events_total", "outcome", 'outcome!="applied"'),
                    "speed {{outcome}}",
                ),
                (rate("lambdalake_lakehouse_dropped_total", "reason"), "lakehouse dropped {{reason}}"),
            ],
            min0=True,
        ),
        ts(
            "Alerts/s: speed vs lakehouse",
            "Alerts raised per second by the speed layer (by kind) and appended to the lakehouse's "
            "gold_alerts table (fraud and sensor together).",
            "ops",
            [
                (rate("lambdalake_speed_alerts_total"), "Lambda speed (all)"),
                (rate("lambdalake_speed_alerts_total", "kind"), "Lambda speed {{kind}}"),
                (
                    rate("lambdalake_lakehouse_rows_total", sel='table="gold_alerts"'),
                    "Lakehouse gold_alerts",
                ),
            ],
            min0=True,
        ),
    ],
    [
        ts(
            "Serving latency p50/p99: Lambda vs lakehouse routes",
            "Time to answer window queries: Lambda routes merge Redis and Postgres on the batch "
            "cutoff, lakehouse routes read the gold Delta tables.",
            "s",
            [
                (quantile(0.5, SERVING_LAT, sel=LAMBDA_ROUTES), "Lambda p50"),
                (quantile(0.99, SERVING_LAT, sel=LAMBDA_ROUTES), "Lambda p99"),
                (quantile(0.5, SERVING_LAT, sel=LAKE_ROUTES), "Lakehouse p50"),
                (quantile(0.99, SERVING_LAT, sel=LAKE_ROUTES), "Lakehouse p99"),
            ],
        ),
        ts(
            "Serving latency p99 by route",
            "99th percentile per route pattern of the Lambda (/v1/lambda/…, /v1/alerts) and "
            "lakehouse (/v1/lakehouse/…) endpoints.",
            "s",
            [
                (
                    quantile(0.99, SERVING_LAT, "route", 'route=~"/v1/(lambda|lakehouse)/.*|/v1/alerts"'),
                    "{{route}}",
                )
            ],
        ),
    ],
    [
        ts(
            "Serving requests/s: Lambda vs lakehouse routes",
            "Requests per second to the Lambda and the lakehouse endpoints of the serving API.",
            "ops",
            [
                (rate("lambdalake_serving_requests_total", sel=LAMBDA_ROUTES), "Lambda routes"),
                (rate("lambdalake_serving_requests_total", sel=LAKE_ROUTES), "Lakehouse routes"),
            ],
            min0=True,
        ),
        ts(
            "Versions: batch version vs gold Delta versions",
            "Lambda publishes a new batch version per recompute; the lakehouse a new Delta version "
            "of each gold table per micro-batch (Lambda layers vs Delta commits/MVCC).",
            "short",
            [
                ("max(lambdalake_batch_version)", "Lambda batch version"),
                (
                    'max by (table) (lambdalake_lakehouse_table_version{table=~"gold_.*"})',
                    "Lakehouse {{table}}",
                ),
            ],
        ),
    ],
]


# --- METRICS.md ------------------------------------------------------------------------------

# metric, type, labels (values), meaning
METRICS = [
    ("lambdalake_ingest_events_total", "counter", "`kind` (sensor_reading, payment), `outcome` (accepted, rejected, failed); pre-registered at 0", "Events received by ingest; accepted = acknowledged by Kafka, failed = valid but not persisted (queue full / broker unavailable)"),
    ("lambdalake_ingest_rejections_total", "counter", "`kind`, `reason` (item: invalid_json, missing_field, duplicate_field, invalid_type, invalid_value, out_of_range, future_timestamp; whole request: unauthorized, unsupported_media_type, too_large, bad_body, body_timeout, rate_limited); appears on the first rejection", "Events (or requests) rejected by validation"),
    ("lambdalake_ingest_requests_total", "counter", "`kind`, `status` (HTTP code: 200, 207, 400, 413, 429, 503, …); appears on the first request", "Ingest HTTP requests"),
    ("lambdalake_ingest_request_duration_seconds", "histogram", "`kind`", "Request duration, body read to broker acknowledgement"),
    ("lambdalake_ingest_producer_queue_depth", "gauge", "—", "Messages in the Kafka producer queue not yet acknowledged"),
    ("lambdalake_speed_events_total", "counter", "`topic` (sensor-readings, payments: the configured topic names), `outcome` (applied, duplicate, late, invalid); pre-registered at 0", "Records consumed by the speed layer"),
    ("lambdalake_speed_resumed_records_total", "counter", "`topic`, `outcome` (skipped, repeated); pre-registered at 0", "Records skipped or read again at an assignment outside exactly-once (`--delivery`)"),
    ("lambdalake_speed_late_events_total", "counter", "`topic`; pre-registered at 0", "Events behind the watermark, routed to the late-events topic"),
    ("lambdalake_speed_lateness_seconds", "histogram", "`topic`", "How far behind the watermark a late event was"),
    ("lambdalake_speed_consumer_lag", "gauge", "`topic`, `partition` (0…n−1; removed on revocation); appears once a partition's high watermark is known", "High watermark − next offset to read into a micro-batch"),
    ("lambdalake_speed_watermark_delay_seconds", "gauge", "`topic`; appears after the first micro-batch with a watermark", "Wall clock − event-time watermark"),
    ("lambdalake_speed_batch_records", "histogram", "—", "Records per micro-batch"),
    ("lambdalake_speed_apply_duration_seconds", "histogram", "—", "Start of a micro-batch → one partition's share applied in Redis"),
    ("lambdalake_speed_redis_write_duration_seconds", "histogram", "—", "Latency of one partition's atomic apply script in Redis"),
    ("lambdalake_speed_window_freshness_seconds", "histogram", "`topic`", "Kafka timestamp of a record → its window updated in Redis"),
    ("lambdalake_speed_alerts_total", "counter", "`kind` (fraud, sensor); pre-registered at 0", "Alerts raised by the speed layer"),
    ("lambdalake_speed_apply_retries_total", "counter", "`reason` (skip, mismatch, redis_error, kafka_error); pre-registered at 0", "Micro-batch partitions not applied at the first try"),
    ("lambdalake_speed_rebalances_total", "counter", "`kind` (assign, revoke); pre-registered at 0", "Consumer-group rebalances seen"),
    ("lambdalake_speed_fraud_model", "gauge", "`version` (`rules` or the batch model's version; value 1, reset on change); appears at the first reference refresh", "The fraud model the speed layer scores with"),
    ("lambdalake_batch_archived_events_total", "counter", "`kind` (sensor_reading, payment, fraud_label, invalid); pre-registered at 0", "Records appended to the Parquet master dataset"),
    ("lambdalake_batch_archiver_files_total", "counter", "—", "Parquet files committed to the master dataset"),
    ("lambdalake_batch_archiver_compacted_files_total", "counter", "—", "Small master-dataset files merged by compaction"),
    ("lambdalake_batch_archiver_flush_duration_seconds", "histogram", "—", "Write one partition's buffered records and commit its manifest"),
    ("lambdalake_batch_run_duration_seconds", "histogram", "—", "Duration of one recompute run, scan to publish (observed for published runs)"),
    ("lambdalake_batch_runs_total", "counter", "`outcome` (published, failed); pre-registered at 0", "Batch recompute runs"),
    ("lambdalake_batch_rows_scanned", "gauge", "—", "Master-dataset rows the last run scanned"),
    ("lambdalake_batch_version", "gauge", "—", "Last batch version published to Postgres (0 before the first)"),
    ("lambdalake_batch_cutoff_seconds", "gauge", "—", "Event-time cutoff of the last version, epoch seconds (0 before the first)"),
    ("lambdalake_batch_model_quality", "gauge", "`measure` (precision, recall, auc); pre-registered at 0, NaN when undefined", "Fraud model quality on the held-out split"),
    ("lambdalake_batch_reference_publications_total", "counter", "`outcome` (written, failed); pre-registered at 0", "Publications of profiles, baselines and the model to Redis"),
    ("lambdalake_serving_requests_total", "counter", "`route` (matched pattern: /v1/lambda/sensors/{device_id}/windows, /v1/lambda/cards/{card_id}/windows, /v1/lambda/cards/{card_id}/risk, /v1/alerts, /v1/overview, /v1/lakehouse/alerts, /v1/lakehouse/sensors/{device_id}/windows, /v1/lakehouse/cards/{card_id}/windows, /v1/lakehouse/tables/{name}/history, /, /openapi.json, /healthz, /readyz, /metrics, `unmatched`), `status`", "HTTP answers of the serving API"),
    ("lambdalake_serving_request_duration_seconds", "histogram", "`route` (as above)", "Time to answer one request"),
    ("lambdalake_serving_degraded_total", "counter", "`store` (batch, speed, kafka pre-registered at 0; `gold` when the lakehouse tables are unreadable)", "Answers given without one of the stores"),
    ("lambdalake_serving_batch_cache_total", "counter", "`result` (hit, miss); pre-registered at 0", "Batch-window reads answered from the cache or Postgres"),
    ("lambdalake_lakehouse_rows_total", "counter", "`table` (bronze, silver_sensor_readings, silver_payments, silver_fraud_labels, gold_sensor_windows, gold_card_windows, gold_fraud_scores, gold_alerts); pre-registered at 0", "Rows written (gold windows: inserted or updated by MERGE)"),
    ("lambdalake_lakehouse_commits_total", "counter", "`table` (as above), `outcome` (ok, conflict, error); pre-registered at 0", "Delta commits of the streaming pipeline"),
    ("lambdalake_lakehouse_commit_duration_seconds", "histogram", "`table` (as above)", "Write one micro-batch to one table and commit it (observed for successful commits)"),
    ("lambdalake_lakehouse_dropped_total", "counter", "`topic` (the event topics), `reason` (duplicate, invalid); appears on the first drop", "Records kept in bronze only"),
    ("lambdalake_lakehouse_maintenance_total", "counter", "`operation` (optimize, vacuum), `outcome` (ok, error); pre-registered at 0; one increment per table per run", "OPTIMIZE / VACUUM runs"),
    ("lambdalake_lakehouse_consumer_lag", "gauge", "`topic`, `partition` (owned partitions; removed on revocation); appears once a fetch saw the partition's high watermark", "High watermark − the offset every table committed"),
    ("lambdalake_lakehouse_table_version", "gauge", "`table` (as above); pre-registered at 0", "Latest Delta version of each table"),
    ("up", "gauge (Prometheus)", "`job` (ingest, speed, batch, serving, lakehouse), `instance`", "1 when the last scrape of the target succeeded"),
]


def metrics_md(built):
    uses = {m: [] for m, *_ in METRICS}
    for fname, dash in built:
        for p in dash["panels"]:
            for t in p["targets"]:
                for m in uses:
                    pattern = r"\b" + re.escape(m) + r"(_bucket|_sum|_count)?\b"
                    if re.search(pattern, t["expr"]):
                        entry = f"{fname.removesuffix('.json')}: {p['title']}"
                        if entry not in uses[m]:
                            uses[m].append(entry)
    lines = [
        "# lambdalake metrics",
        "",
        "Every metric the services register (`services/*/src/metrics.rs`, `prometheus` crate 0.14, no",
        "process collector), what it means and which dashboard panels chart it. Generated by",
        "`dashboards/build.py` (edit the script, not this file); `python3 dashboards/exprs.py` prints",
        "every query and checks names and labels against the code.",
        "",
        "Histograms expose `<name>_bucket{le}`, `<name>_sum` and `<name>_count`; counters are exposed",
        "under the registered `_total` name. A vector's series appears when its label values are first",
        "used: the ones marked *pre-registered* exist at 0 from start. Prometheus adds `job` (`ingest`,",
        "`speed`, `batch`, `serving`, `lakehouse`) and `instance`.",
        "",
        "| metric | type | labels (values) | meaning | panels |",
        "|---|---|---|---|---|",
    ]
    for m, typ, labels, meaning in METRICS:
        panels = "<br>".join(uses[m]) or "—"
        lines.append(f"| `{m}` | {typ} | {labels} | {meaning} | {panels} |")
    lines += [
        "",
        "## Not charted, or charted differently than asked",
        "",
        "- **Checkpoints**: written by Delta commits every `LAMBDALAKE_LAKEHOUSE_CHECKPOINT_INTERVAL`",
        "  versions, not counted; `lambdalake_lakehouse_maintenance_total` has `optimize` and `vacuum` only.",
        "- **Lakehouse late events**: the lakehouse never drops an event for lateness (gold windows are",
        "  MERGEd), so there is no late counter; the comparison shows speed late events next to the",
        "  lakehouse's drops (duplicate, invalid).",
        "- **Lakehouse trigger**: a setting, not a metric; the dashboards derive the effective",
        "  micro-batch interval as `1 / rate(commits_total{table=\"bronze\",outcome=\"ok\"})`.",
        "",
    ]
    return "\n".join(lines)


def main():
    built = []
    specs = {
        "lambdalake-overview": (
            "Ingest, lag, alerts and health of both architectures at a glance.",
            overview,
        ),
        "lambdalake-lambda": (
            "Lambda architecture: speed layer (Redis), batch layer (Parquet + Polars + Postgres), "
            "serving layer merging both on the batch cutoff.",
            lambda_rows,
        ),
        "lambdalake-lakehouse": (
            "Lakehouse: one streaming pipeline into Delta bronze/silver/gold, commits, versions, "
            "maintenance.",
            lakehouse_rows,
        ),
        "lambdalake-comparison": (
            "The same workload through Lambda and Lakehouse, side by side.",
            comparison_rows,
        ),
    }
    for uid, fname, title in DASHBOARDS:
        desc, rows = specs[uid]
        dash = dashboard(uid, title, desc, rows)
        (HERE / fname).write_text(json.dumps(dash, indent=2, ensure_ascii=False) + "\n")
        built.append((fname, dash))
        n = sum(len(p["targets"]) for p in dash["panels"])
        print(f"{fname}: {len(dash['panels'])} panels, {n} queries")
    (HERE / "METRICS.md").write_text(metrics_md(built))
    print("METRICS.md")


if __name__ == "__main__":
    main()
