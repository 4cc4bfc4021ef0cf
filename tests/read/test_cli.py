"""`tollgate usage / preview / invoices / trace` as a real subprocess on the test PostgreSQL and Redis."""
from __future__ import annotations

import json

from rater import periods
from tests.control.test_cli import cli  # noqa: F401  (fixture)
from tests.rater.conftest import raw
from tests.rater.test_periods import LAST, LAST_PERIOD, LAST_TS, events_for, sample_plan


async def test_daily_reads(cli, pg, redis, pipeline, make_customer):  # noqa: F811
    c = await make_customer(sample_plan("postpaid"))
    evs = events_for(c)
    await pipeline.process_raw(raw(evs), now=LAST.timestamp())

    out = cli("usage", "--customer", c, "--from", LAST_TS[:10], "--to", LAST_TS[:10] + "T23:59:59Z",
              "--group-by", "model", "--metric", "input_tokens").stdout
    assert "claude-opus-4-1" in out and "claude-sonnet-4-6" in out and "totals" in out
    got = json.loads(cli("--json", "usage", "--customer", c, "--from", LAST_TS[:10], "--bucket", "hour").stdout)
    assert {t["metric"] for t in got["totals"]} >= {"input_tokens", "output_tokens"}
    assert "spend to date" in cli("preview", "--customer", c).stdout

    await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    inv = f"inv_{LAST_PERIOD}_{c}"
    assert inv in cli("invoices", "list", "--customer", c).stdout
    shown = json.loads(cli("--json", "invoices", "show", inv).stdout)
    line = next(x for x in shown["lines"] if x["kind"] == "usage")
    assert "req_" in cli("invoices", "sources", inv, str(line["line_no"])).stdout
    assert evs[0]["id"] in cli("trace", evs[0]["correlation_id"]).stdout
    assert "field" not in cli("usage", "--customer", c, "--bucket", "hour", "--from", "2000-01-01", expect=2).stdout
