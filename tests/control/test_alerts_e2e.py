"""End to end, all real processes (enforcer, rater, tollgate-control) and a real receiver on
loopback: usage over HTTP crosses a spend threshold, and the signed webhook arrives within 5 s of
the 202, measured (loadtest/bench_alert_latency.py measures the same at volume); a further
event crossing nothing new sends nothing more."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from loadtest.bench_alert_latency import CROSSING_TOKENS, TOKEN, measure, provision, send
from tests.control.webhook_receiver import Receiver
from tests.rater.processes import RaterProcess
from tests.servers import ControlProcess, EnforcerProcess


@pytest.mark.slow
async def test_usage_to_webhook_within_5_s(pg, pg_dsn, redis, redis_server):
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_ADMIN_TOKEN": TOKEN, "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    ids, keys = await provision(pg, redis, 5)
    procs = [ControlProcess(env).start(), RaterProcess(env, ["--sweep-interval", "0"]).start().wait_started(),
             EnforcerProcess(env).start()]
    control, rater, enforcer = procs
    try:
        with Receiver() as rx:
            lat = await measure(enforcer.url, control.url, ids, keys, rx, rate=10)
            assert max(lat) < 5, lat
            async with httpx.AsyncClient(timeout=10) as http:
                await send(http, enforcer.url, keys[0], CROSSING_TOKENS)  # 1.20: nothing new to cross
            await asyncio.sleep(1.0)
            mine = [r for r in rx.received if r.body["customer_id"] in ids]
            assert sorted(r.body["customer_id"] for r in mine) == sorted(ids)  # one each, once
            assert all(r.signed and r.body["type"] == "spend.threshold" and r.body["threshold"] == "50" for r in mine)
    finally:
        for p in reversed(procs):
            p.stop()
        # the bench's endpoint is global: later tests' alerts must not go to a receiver that is gone
        await pg.execute("UPDATE webhook_endpoints SET enabled = false WHERE customer_id IS NULL")
    print(f"alert latency over {len(lat)} alerts: max {max(lat) * 1000:.0f} ms")
