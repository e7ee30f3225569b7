#!/usr/bin/env python3
"""Print every query of the lambdalake dashboards and check them against the code.

    python3 dashboards/exprs.py            # every (dashboard, panel, expr), then the checks
    python3 dashboards/exprs.py --quiet    # the checks only

Prints one line per target: `file | panel title | expr`. Then checks, with the standard library
only:

- the dashboard conventions: uid, tags, refresh 5s, last 15 minutes, schemaVersion >= 39, no
  `__inputs`, no template variables, links to the other dashboards;
- every panel: timeseries or stat, title, description, unit, the `prometheus` datasource on the
  panel and each target, a gridPos inside 24 columns that overlaps no other;
- every expr: no macro but `$__rate_interval`/`$__interval`, no conditional filter (`> 0`,
  `== 1`, `unless`, `absent`), every `lambdalake_*` name registered in `services/*/src/metrics.rs`
  (with `_bucket`/`_sum`/`_count` only on histograms), every label in a matcher or a `by (...)`
  one the metric has (plus `job`, `instance`, `le`), `=`/`=~` values that the code uses;
- when the `promql_parser` Python package is importable (PyPI `promql-parser`), every expr parses
  after the test's substitution (`$__rate_interval` → 1m, `$__interval` → 15s).

Exit status 1 when a check fails.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FILES = ["overview.json", "lambda.json", "lakehouse.json", "comparison.json"]
UIDS = {
    "overview.json": "lambdalake-overview",
    "lambda.json": "lambdalake-lambda",
    "lakehouse.json": "lambdalake-lakehouse",
    "comparison.json": "lambdalake-comparison",
}
DS = {"type": "prometheus", "uid": "prometheus"}
ALLOWED_MACROS = {"$__rate_interval", "$__interval"}
SUBST = {"$__rate_interval": "1m", "$__interval": "15s"}
ALWAYS_LABELS = {"job", "instance"}

# label values the code uses (see METRICS.md); `=` and `=~` matchers must select one of them
TABLES = [
    "bronze",
    "silver_sensor_readings",
    "silver_payments",
    "silver_fraud_labels",
    "gold_sensor_windows",
    "gold_card_windows",
    "gold_fraud_scores",
    "gold_alerts",
]
ROUTES = [
    "/v1/lambda/sensors/{device_id}/windows",
    "/v1/lambda/cards/{card_id}/windows",
    "/v1/lambda/cards/{card_id}/risk",
    "/v1/alerts",
    "/v1/lakehouse/alerts",
    "/v1/overview",
    "/",
    "/openapi.json",
    "/v1/lakehouse/sensors/{device_id}/windows",
    "/v1/lakehouse/cards/{card_id}/windows",
    "/v1/lakehouse/tables/{name}/history",
    "/healthz",
    "/readyz",
    "/metrics",
    "unmatched",
]
VALUES = {
    "table": TABLES,
    "route": ROUTES,
    "outcome": [
        "accepted", "rejected", "failed",  # ingest
        "applied", "duplicate", "late", "invalid",  # speed
        "published", "written",  # batch
        "ok", "conflict", "error",  # lakehouse
    ],
    "job": ["ingest", "speed", "batch", "serving", "lakehouse"],
    "kind": ["sensor_reading", "payment", "fraud_label", "invalid", "fraud", "sensor", "assign", "revoke"],
    "operation": ["optimize", "vacuum"],
    "result": ["hit", "miss"],
    "store": ["batch", "speed", "kafka", "gold"],
    "measure": ["precision", "recall", "auc"],
}


def registered():
    """{name: (type, [labels])} from every `register_*!` in services/*/src/metrics.rs."""
    out = {}
    pat = re.compile(
        r'register_(\w+?)!\(\s*"(lambdalake_\w+)",\s*"(?:[^"\\]|\\.)*"\s*(?:,\s*&\[([^\]]*)\])?',
        re.S,
    )
    for f in sorted(ROOT.glob("services/*/src/metrics.rs")):
        for macro, name, labels in pat.findall(f.read_text()):
            typ = "histogram" if "histogram" in macro else "counter" if "counter" in macro else "gauge"
            out[name] = (typ, re.findall(r'"(\w+)"', labels or ""))
    return out


def base_metric(token, metrics):
    """The registered metric a series name belongs to, or None."""
    if token in metrics:
        return token, ""
    for suffix in ("_bucket", "_sum", "_count"):
        if token.endswith(suffix) and token[: -len(suffix)] in metrics:
            return token[: -len(suffix)], suffix
    return None, ""


def check_expr(expr, metrics):
    problems = []
    for m in re.findall(r"\$\{?\w+", expr):
        if m.replace("{", "") not in ALLOWED_MACROS:
            problems.append(f"template variable {m}")
    for bad in (r">\s*0\b", r"==\s*1\b", r"\bunless\b", r"\babsent(_over_time)?\s*\("):
        if re.search(bad, expr):
            problems.append(f"conditional filter /{bad}/")
    # strings out of the way before looking for names
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set()
    for token in re.findall(r"\b(lambdalake_\w+)", no_strings):
        base, suffix = base_metric(token, metrics)
        if base is None:
            problems.append(f"unknown metric {token}")
            continue
        typ, _ = metrics[base]
        if suffix and typ != "histogram":
            problems.append(f"{token}: {base} is a {typ}, it has no {suffix} series")
        if not suffix and typ == "histogram":
            problems.append(f"{token} is a histogram: use _bucket, _sum or _count")
        names.add(base)
    uses_up = re.search(r"\bup\b", no_strings) is not None
    known = set(ALWAYS_LABELS)
    for n in names:
        known |= set(metrics[n][1])
    if re.search(r"_bucket\b", no_strings):
        known.add("le")
    # labels created by label_replace(v, "dst", ...)
    known |= set(re.findall(r'label_replace\(.*?,\s*"(\w+)"', expr, re.S))
    # matchers: metric{...}
    for metric, body in re.findall(r"\b(lambdalake_\w+|up)\{([^}]*)\}", expr):
        base, suffix = base_metric(metric, metrics)
        allowed = set(ALWAYS_LABELS)
        if base:
            allowed |= set(metrics[base][1])
            if suffix == "_bucket":
                allowed.add("le")
        for label, op, value in re.findall(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"', body):
            if metric != "up" and label not in allowed:
                problems.append(f"{metric} has no label {label}")
            if op in ("=", "=~") and label in VALUES:
                vals = VALUES[label]
                ok = value in vals if op == "=" else any(re.fullmatch(value, v) for v in vals)
                if not ok:
                    problems.append(f'{label}{op}"{value}" selects no value the code uses')
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", no_strings):
        for label in [x.strip() for x in group.split(",") if x.strip()]:
            if label not in known and not uses_up:
                problems.append(f"grouping label {label} not on {sorted(names)}")
    return problems


def check_dashboard(fname, d):
    problems = []
    want = {
        "uid": UIDS[fname],
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
    }
    for k, v in want.items():
        if d.get(k) != v:
            problems.append(f"{k} is {d.get(k)!r}, want {v!r}")
    if d.get("tags") != ["lambdalake"]:
        problems.append(f"tags {d.get('tags')!r}")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 39:
        problems.append(f"schemaVersion {d.get('schemaVersion')!r}")
    if "__inputs" in d:
        problems.append("__inputs present")
    if d.get("templating", {}).get("list"):
        problems.append("template variables present")
    linked = {l.get("url", "").rsplit("/", 1)[-1] for l in d.get("links", [])}
    missing = set(UIDS.values()) - {UIDS[fname]} - linked
    if missing:
        problems.append(f"no link to {sorted(missing)}")
    ids, cells = set(), {}
    for p in d.get("panels", []):
        t = p.get("title", "?")
        if p.get("id") in ids:
            problems.append(f"{t}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") not in ("timeseries", "stat"):
            problems.append(f"{t}: type {p.get('type')}")
        if not p.get("title") or not p.get("description"):
            problems.append(f"{t}: title or description missing")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{t}: no unit")
        if p.get("datasource") != DS:
            problems.append(f"{t}: panel datasource {p.get('datasource')}")
        if not p.get("targets"):
            problems.append(f"{t}: no targets")
        for tg in p.get("targets", []):
            if tg.get("datasource") != DS:
                problems.append(f"{t}: target datasource {tg.get('datasource')}")
            if not tg.get("expr"):
                problems.append(f"{t}: empty expr")
        g = p.get("gridPos", {})
        x, y, w, h = g.get("x", -1), g.get("y", -1), g.get("w", 0), g.get("h", 0)
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 24:
            problems.append(f"{t}: gridPos {g}")
        for cx in range(max(x, 0), x + w):
            for cy in range(max(y, 0), y + h):
                if (cx, cy) in cells:
                    problems.append(f"{t}: overlaps {cells[(cx, cy)]}")
                    break
                cells[(cx, cy)] = t
            else:
                continue
            break
    return problems


def main():
    quiet = "--quiet" in sys.argv
    metrics = registered()
    try:
        import promql_parser  # type: ignore
    except ImportError:
        promql_parser = None
    problems, used = [], set()
    for fname in FILES:
        d = json.loads((HERE / fname).read_text())
        problems += [f"{fname}: {p}" for p in check_dashboard(fname, d)]
        n_targets = 0
        for p in d["panels"]:
            for tg in p.get("targets", []):
                expr = tg["expr"]
                n_targets += 1
                if not quiet:
                    print(f"{fname} | {p['title']} | {expr}")
                problems += [f"{fname} | {p['title']}: {x}" for x in check_expr(expr, metrics)]
                used |= {
                    base_metric(t, metrics)[0] for t in re.findall(r"\b(lambdalake_\w+)", expr)
                }
                if promql_parser is not None:
                    concrete = expr
                    for k, v in SUBST.items():
                        concrete = concrete.replace(k, v)
                    try:
                        promql_parser.parse(concrete)
                    except Exception as e:  # noqa: BLE001 - any parse failure is a problem
                        problems.append(f"{fname} | {p['title']}: does not parse: {e}")
        print(f"# {fname}: {len(d['panels'])} panels, {n_targets} exprs", file=sys.stderr)
    unused = sorted(set(metrics) - used)
    print(f"# {len(metrics)} metrics registered in the code, {len(used - {None})} charted", file=sys.stderr)
    if unused:
        print(f"# registered but not charted: {', '.join(unused)}", file=sys.stderr)
    if promql_parser is None:
        print("# promql_parser not installed: syntax not checked", file=sys.stderr)
    else:
        print("# every expr parsed with promql_parser", file=sys.stderr) if not any(
            "does not parse" in p for p in problems
        ) else None
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print(f"# {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
