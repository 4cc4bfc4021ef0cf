"""`tollgate dead-letters ...` and `tollgate periods ...` as real subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control.accounts import customers
from tests.rater.conftest import raw, uid, usage
from tests.rater.test_periods import LAST_PERIOD, LAST_TS, sample_plan

TOLLGATE = str(Path(sys.executable).parent / "tollgate")


@pytest.fixture
def cli(pg_dsn, redis_server):
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url}

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([TOLLGATE, *args], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        return p
    return run


async def test_dead_letters_list_and_replay(cli, pg, redis, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for("postpaid"))
    ghost = uid("cus")
    ev = usage(ghost, 10, 10)
    await pipeline.process_raw(raw([ev]))
    listed = json.loads(cli("dead-letters", "list", "--customer", ghost, "--json").stdout)
    assert [(d["event_id"], d["reason"]) for d in listed] == [(ev["id"], "unknown_customer")]
    assert json.loads(listed[0]["raw"])["id"] == ev["id"]
    assert ev["id"] in cli("dead-letters", "list", "--reason", "unknown_customer").stdout

    cli("dead-letters", "replay", str(listed[0]["id"]), expect=3)  # still no such customer
    plan_id = await pg.fetchval("SELECT plan_id FROM customers WHERE id = $1", c)
    await customers.create_customer(pg, redis, name="Ghost", plan_id=plan_id, customer_id=ghost)
    out = json.loads(cli("dead-letters", "replay", str(listed[0]["id"]), "--json").stdout)
    assert out == {"replayed": 1, "still_failing": 0}
    assert await pg.fetchval("SELECT count(*) FROM ledger_lines WHERE event_id = $1", ev["id"]) == 2
    assert cli("dead-letters", "list", "--customer", ghost, "--json").stdout.strip() == "[]"


async def test_periods_close_and_invoice(cli, pg, redis, pipeline, make_customer):
    c = await make_customer(sample_plan("postpaid"))
    await pipeline.process_raw(raw([usage(c, 40_000, 9_000, ts=LAST_TS)]))
    closed = json.loads(cli("periods", "close", "--period", LAST_PERIOD, "--customer", c, "--json").stdout)
    assert [(x["customer_id"], x["already_closed"]) for x in closed] == [(c, False)]
    text = cli("periods", "invoice", closed[0]["invoice_id"]).stdout
    assert "minimum commit true-up" in text and "input_tokens" in text
    assert closed[0]["amount_due"] in text
