"""ops/grafana/tollgate.json cannot rot: every metric its panels query is exported by the real
enforcer, the real rater or the real tollgate-control (all scraped over HTTP here)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tests.rater.processes import RaterProcess
from tests.scrape import scrape_until
from tests.servers import ControlProcess
from tollgate.local_services import free_port

DASHBOARD = Path(__file__).resolve().parents[1] / "ops" / "grafana" / "tollgate.json"

# PromQL words that look like identifiers and are not metrics.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once label matchers, ranges,
    grouping clauses, strings and numbers are gone, and that are not function calls."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label values, legend text)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery windows
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\boffset\s+\w+", "", e)  # offset 5m
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", e)  # numbers, 1e6 included
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, rows' nested panels included."""
    doc = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            out.extend((p.get("title", ""), t["expr"]) for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return out


def test_the_extractor_finds_metrics_and_nothing_else():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$j", x="y(z)"}[$__rate_interval])))'
                        ) == {"a_bucket"}
    assert metric_names("sum(rate(b_total[5m])) / 1e6 + max by (topic, partition) (c)") == {"b_total", "c"}
    assert metric_names("sum(x) or on (k) y unless z offset 5m") == {"x", "y", "z"}


async def test_every_dashboard_metric_is_exported_by_the_enforcer_the_rater_or_control(enforcer, pg_dsn, redis,
                                                                                       redis_server):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    used = {name: title for title, expr in exprs for name in metric_names(expr)}
    assert any(n.startswith("tollgate_rater_") for n in used) and "tollgate_decisions_total" in used
    assert "tollgate_webhook_attempts_total" in used

    port = free_port()
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_RATER_METRICS_PORT": str(port), "TOLLGATE_RATER_METRICS_HOST": "127.0.0.1"}
    rater = RaterProcess(env, ["--sweep-interval", "0"]).start().wait_started()
    try:
        rater_metrics = await scrape_until(f"http://127.0.0.1:{port}/metrics", lambda s: True, "the rater's /metrics",
                                           alive=rater.alive)
    finally:
        assert rater.stop() == 0, rater.logs()[-3000:]
    enforcer_metrics = await scrape_until(f"{enforcer.url}/metrics", lambda s: True, "the enforcer's /metrics")
    control = ControlProcess(env).start()
    try:
        control_metrics = await scrape_until(f"{control.url}/metrics", lambda s: True, "tollgate-control's /metrics",
                                             alive=control.alive)
    finally:
        control.stop()

    exported = rater_metrics.names | enforcer_metrics.names | control_metrics.names
    missing = {name: title for name, title in used.items() if name not in exported}
    assert not missing, f"dashboard panels query metrics nobody exports: {missing}"
