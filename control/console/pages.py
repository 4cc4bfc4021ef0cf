"""HTML of the console's pages, from the dicts of control.console.data. Every value is escaped;
tables carry captions and column headers; each page's changing part is one `#live` region its
script replaces from /console/live/... (control/console/static/console.js)."""
from __future__ import annotations

from decimal import Decimal
from html import escape
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

import yaml

TEMPLATES = Path(__file__).parent / "templates"
VENDOR_CHART = Path(__file__).parent / "static" / "vendor" / "chart.umd.min.js"


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text())


def _e(v: Any) -> str:
    return "—" if v is None else escape(str(v))


def _link(href: str, text: Any) -> str:
    return f'<a href="{escape(href)}">{_e(text)}</a>'


def customer_href(cid: str) -> str:
    return f"/console/customers/{quote(cid, safe='')}"


def plan_href(pid: str) -> str:
    return f"/console/plans/{quote(pid, safe='')}"


NUMERIC = {"spend", "spend_cap", "of_cap_pct", "amount", "quantity", "remaining", "total", "subtotal", "prepaid",
           "amount_due", "attempts", "events", "priority", "tax", "discount", "estimated_tokens"}


NUM = ' class="num"'


def table(caption: str, columns: list[tuple[str, str]], rows: list[dict], *, tid: str,
          cells: dict | None = None) -> str:
    """`columns`: (key, header); `cells`: key -> function(row) returning ready HTML for that cell."""
    cells = cells or {}
    head = "".join(f'<th scope="col"{NUM if k in NUMERIC else ""}>{escape(h)}</th>' for k, h in columns)
    if not rows:
        return (f'<table id="{tid}"><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
                f'<tbody><tr><td colspan="{len(columns)}" class="empty">none</td></tr></tbody></table>')
    body = []
    for r in rows:
        tds = []
        for k, _ in columns:
            html = cells[k](r) if k in cells else _e(r.get(k))
            tds.append(f'<td data-col="{k}"{NUM if k in NUMERIC else ""}>{html}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table id="{tid}"><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def facts(items: list[tuple[str, str, Any]]) -> str:
    """(id, label, value) as a definition list; the id lets a test or a reader find one figure."""
    return '<dl class="facts">' + "".join(
        f'<dt>{escape(label)}</dt><dd id="{fid}">{_e(value)}</dd>' for fid, label, value in items) + "</dl>"


def page(title: str, body: str, csrf: str, *, charts: bool = False, live: bool = False) -> str:
    scripts = []
    if charts and VENDOR_CHART.exists():
        scripts.append('<script src="/console/static/vendor/chart.umd.min.js" defer></script>')
    if live:
        scripts.append('<script src="/console/static/console.js" defer></script>')
    return _template("base.html").substitute(title=escape(title), body=body, csrf=escape(csrf),
                                             scripts="\n".join(scripts))


def login(message: str = "") -> str:
    return _template("login.html").substitute(
        message=f'<p class="error" role="alert">{escape(message)}</p>' if message else "")


def live_region(url: str, inner: str, charts_html: str = "") -> str:
    return (f'<p id="live-status" aria-live="polite">Live: refreshed every second.</p>{charts_html}'
            f'<div id="live" data-live="{escape(url)}">{inner}</div>')


def chart_figure(cid: str, label: str) -> str:
    if not VENDOR_CHART.exists():
        return ""
    return (f'<figure><figcaption>{escape(label)}</figcaption>'
            f'<canvas id="{cid}" role="img" aria-label="{escape(label)} (the same figures are in the tables below)">'
            f'</canvas></figure>')


# --------------------------------------------------------------------------- overview


def overview_live(d: dict) -> str:
    ops = d["ops"]
    lag = ops["rater_lag_s"]
    parts = [
        "<h2>Operations today</h2>",
        facts([("fail-open-rate", "Fail-open rate today",
                None if ops["fail_open_rate"] is None else f'{ops["fail_open_rate"]} %'),
               ("fail-open-count", "Fail-open checks / usage events rated today",
                f'{ops["fail_open_today"]} / {ops["usage_today"]}'),
               ("newest-rated", "Newest rated event", ops["newest_rated_at"]),
               ("rater-lag", "Rater lag (now − newest rated event)", None if lag is None else f"{lag} s")]),
        '<p class="hint">Fail-open rate: checks the enforcer allowed without Redis (recorded by the rater as '
        'fail_open events) over all events rated today, for the customers listed. The lag reads high when no '
        'traffic flows.</p>',
        "<h2>Customers by spend against cap</h2>",
        table("Customers, nearest their spend cap first", [
            ("id", "Customer"), ("name", "Name"), ("plan_id", "Plan"), ("status", "Status"), ("period", "Period"),
            ("spend", "Spend"), ("spend_cap", "Spend cap"), ("of_cap_pct", "% of cap")], d["customers"],
            tid="customers", cells={"id": lambda r: _link(customer_href(r["id"]), r["id"]),
                                    "plan_id": lambda r: _link(plan_href(r["plan_id"]), r["plan_id"])}),
        "<h2>Alerts of the day</h2>",
        table("Alerts raised today (UTC)", [("raised_at", "Raised"), ("type", "Kind"), ("customer_id", "Customer"),
                                            ("threshold", "Threshold"), ("period", "Period")], d["alerts_today"],
              tid="alerts-today", cells={"customer_id": lambda r: _link(customer_href(r["customer_id"]),
                                                                        r["customer_id"])}),
        "<h2>Plans</h2>",
        table("Plans", [("id", "Plan"), ("name", "Name"), ("version", "Version"), ("customers", "Customers")],
              d["plans"], tid="plans", cells={"id": lambda r: _link(plan_href(r["id"]), r["id"])}),
    ]
    return "".join(parts)


# --------------------------------------------------------------------------- customer


def _tree(t: dict) -> str:
    def limits(n: dict) -> str:
        lim = n.get("limits") or {}
        return ", ".join(f"{k} {v}" for k, v in sorted(lim.items())) or "no limits of its own"

    def key(k: dict) -> str:
        return (f'<li>key {_e(k["prefix"])}… ({_e(k["status"])}): spend {_e(k["spend"])}; {escape(limits(k))}'
                f'</li>')

    teams = []
    for team in t["teams"]:
        apps = "".join(
            f'<li>{_e(a["kind"])} <strong>{_e(a["name"])}</strong> ({_e(a["id"])}): spend {_e(a["spend"])}; '
            f'{escape(limits(a))}<ul class="tree">{"".join(key(k) for k in a["keys"])}</ul></li>'
            for a in team["apps"])
        teams.append(f'<li>team <strong>{_e(team["name"])}</strong> ({_e(team["id"])}): spend {_e(team["spend"])}; '
                     f'{escape(limits(team))}<ul class="tree">{apps}</ul></li>')
    loose = "".join(key(k) for k in t["keys"])
    return (f'<ul class="tree" id="tree"><li>customer: spend {_e(t["spend"])} of cap {_e(t["spend_cap"])}; '
            f'{escape(limits(t))}<ul class="tree">{"".join(teams)}{loose}</ul></li></ul>')


def customer_live(d: dict) -> str:
    c, pv, w, t = d["customer"], d["preview"], d["wallet"], d["tree"]
    usage_cols = [("day", "Day"), ("metric", "Metric"), ("quantity", "Quantity"), ("amount", "Amount")]
    parts = [
        facts([("status", "Status", c["status"]), ("plan", "Plan", c["plan_id"]), ("tier", "Tier", c["tier"]),
               ("billing-mode", "Billing mode", c["billing_mode"]), ("period", "Period", t["period"]),
               ("spend", "Spend this period", t["spend"]), ("spend-cap", "Spend cap", t["spend_cap"]),
               ("commit", "Minimum commit", pv["minimum_commit"]), ("currency", "Currency", w["currency"]),
               ("balance", "Wallet balance", w["balance"]), ("held", "Held", w["held"]),
               ("available", "Available", w["available"]), ("preview-total", "Invoice preview total", pv["total"])]),
        f'<p>{_link(plan_href(c["plan_id"]), "Open plan " + c["plan_id"])}</p>',
        "<h2>Usage</h2>",
        table("Totals this period by metric", [("metric", "Metric"), ("quantity", "Quantity"), ("amount", "Amount"),
                                               ("events", "Events")], d["usage_totals"], tid="usage-totals"),
        table("Usage by model per day", usage_cols[:1] + [("model", "Model")] + usage_cols[1:], d["usage_by_model"],
              tid="usage-by-model"),
        table("Usage by tool per day", usage_cols[:1] + [("tool", "Tool")] + usage_cols[1:], d["usage_by_tool"],
              tid="usage-by-tool"),
        "<h2>Wallet and credit grants</h2>",
        table("Live credit grants", [("id", "Grant"), ("kind", "Kind"), ("priority", "Priority"), ("amount", "Amount"),
                                     ("remaining", "Remaining"), ("expires_at", "Expires")], w["credit_grants"],
              tid="grants"),
        "<h2>Tier timeline</h2>",
        table("Tier transitions, newest first", [("at", "At"), ("period", "Period"), ("old_tier", "From"),
                                                  ("new_tier", "To"), ("reason", "Reason"), ("spend", "Spend")],
              d["tier_transitions"], tid="tiers"),
        "<h2>Open holds</h2>",
        table("Open holds, soonest to expire first", [("hold_id", "Hold"), ("key_id", "Key"), ("amount", "Amount"),
                                                      ("estimated_tokens", "Est. tokens"), ("placed_at", "Placed"),
                                                      ("expires_at", "Expires")], d["holds"], tid="holds"),
        "<h2>Decisions</h2>",
        table("Decisions in the last 24 hours by reason", [("decision", "Decision"), ("reason", "Reason"),
                                                           ("level", "Level"), ("count", "Count")],
              d["decisions"], tid="decisions"),
        "<h2>Invoice preview</h2>",
        table(f'Current period {pv["period"]} so far', [("description", "Line"), ("quantity", "Quantity"),
                                                        ("amount", "Amount")], pv["lines"], tid="preview-lines"),
        table("Invoices", [("period", "Period"), ("invoice_id", "Invoice"), ("status", "Status"),
                           ("total", "Total"), ("prepaid", "Prepaid"), ("amount_due", "Amount due")],
              d["invoices"], tid="invoices"),
        "<h2>Alerts and webhook deliveries</h2>",
        table("Recent alerts", [("raised_at", "Raised"), ("type", "Kind"), ("threshold", "Threshold"),
                                ("period", "Period")], d["alerts"], tid="alerts"),
        table("Recent webhook deliveries", [("created_at", "Created"), ("alert_id", "Alert"), ("status", "Status"),
                                            ("attempts", "Attempts"), ("last_status_code", "Last HTTP status")],
              d["deliveries"], tid="deliveries"),
        "<h2>Teams, apps and agents</h2>",
        _tree(t),
    ]
    return "".join(parts)


def customer_charts(d: dict) -> dict:
    """What the charts plot (numbers as decimal strings: the script turns them into points)."""
    def stacked(rows: list[dict], dim: str) -> dict:
        days = sorted({r["day"] for r in rows})
        series: dict[str, dict[str, str]] = {}
        for r in rows:
            s = series.setdefault(r[dim], {})
            s[r["day"]] = str(Decimal(s.get(r["day"], "0")) + Decimal(r["amount"]))
        return {"labels": days, "series": [{"name": k, "data": [v.get(day, "0") for day in days]}
                                           for k, v in sorted(series.items())]}
    return {"spend": {"points": d["spend_series"], "cap": d["tree"]["spend_cap"],
                      "commit": d["preview"]["minimum_commit"]},
            "by_model": stacked(d["usage_by_model"], "model"), "by_tool": stacked(d["usage_by_tool"], "tool")}


def customer_charts_html() -> str:
    figs = "".join(chart_figure(cid, label) for cid, label in (
        ("chart-spend", "Spend this period against cap and commit"),
        ("chart-model", "Amount by model per day"), ("chart-tool", "Amount by tool per day")))
    return f'<section class="charts" aria-label="Charts">{figs}</section>' if figs else \
        '<p class="notice">Charts are off: the chart library was not installed (npm missing at install time).</p>'


# --------------------------------------------------------------------------- plan


def plan_live(d: dict) -> str:
    p = d["plan"]
    return "".join([
        facts([("plan-id", "Plan", p["id"]), ("plan-name", "Name", p["name"]), ("version", "Version", p["version"]),
               ("updated", "Version since", p["updated_at"]), ("currency", "Currency", p["currency"]),
               ("billing-mode", "Billing mode", p["billing_mode"]), ("tiers", "Tiers", ", ".join(p["tiers"]))]),
        "<h2>Versions</h2>",
        table("Versions as applied, newest first", [("version", "Version"), ("applied_at", "Applied at"),
                                                    ("charges", "Charges")],
              [{**v, "charges": ", ".join(c.get("id", c.get("metric", "")) for c in v["document"].get("charges", [])
                                          if isinstance(c, dict))} for v in d["versions"]], tid="plan-versions"),
        "<h2>Customers on this plan</h2>",
        table("Customers on this plan", [("id", "Customer"), ("name", "Name"), ("status", "Status"),
                                         ("tier", "Tier"), ("spend_cap", "Spend cap")], d["customers"],
              tid="plan-customers", cells={"id": lambda r: _link(customer_href(r["id"]), r["id"])}),
        "<h2>Document</h2>",
        f'<pre id="plan-document" tabindex="0" aria-label="Plan document (YAML)">'
        f'{escape(yaml.safe_dump(p["document"], sort_keys=False, allow_unicode=True))}</pre>',
    ])


# --------------------------------------------------------------------------- simulator


def simulator_form(csrf: str, draft: str = "", period: str = "", customers: str = "") -> str:
    return f"""<p>Rates a past period's usage under a draft plan and shows, per customer and line, the current and
the draft amounts (POST /admin/simulate).</p>
<form method="post" action="/console/simulator" id="simulate">
  <input type="hidden" name="csrf" value="{escape(csrf)}">
  <p><label for="draft">Draft plan (YAML or JSON)</label><br>
  <textarea id="draft" name="plan" rows="16" required>{escape(draft)}</textarea></p>
  <p><label for="sim-period">Period (YYYYMM)</label>
  <input id="sim-period" name="period" pattern="[0-9]{{6}}" required value="{escape(period)}"></p>
  <p><label for="sim-customers">Customers (comma-separated; empty: all on the plan)</label>
  <input id="sim-customers" name="customers" value="{escape(customers)}"></p>
  <p><button type="submit">Simulate</button></p>
</form>"""


def simulator_result(status: int, body: Any) -> str:
    if status == 404:
        return ('<p class="notice" role="status" id="sim-result">The simulator is not available on this control '
                'plane (POST /admin/simulate answered 404): upgrade tollgate-control.</p>')
    if status >= 400 or not isinstance(body, dict):
        msg = body.get("error") if isinstance(body, dict) else body
        field = body.get("field") if isinstance(body, dict) else None
        return (f'<p class="error" role="alert" id="sim-result">The simulation was refused ({status}): {_e(msg)}'
                f'{f" (field {_e(field)})" if field else ""}</p>')
    # the rows: the first list of objects in the answer, whatever its name; the rest as facts
    rows_key = next((k for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
    rows = body.get(rows_key, []) if rows_key else []
    columns = []
    for r in rows:
        for k, v in r.items():
            if k not in [c for c, _ in columns] and not isinstance(v, (dict, list)):
                columns.append((k, k.replace("_", " ")))
    scalars = [(f"sim-{k}", k.replace("_", " "), v) for k, v in body.items() if not isinstance(v, (dict, list))]
    return (f'<section id="sim-result" role="status"><h2>Result</h2>{facts(scalars)}'
            f'{table("Simulated amounts per customer and line", columns, rows, tid="sim-rows")}</section>')
