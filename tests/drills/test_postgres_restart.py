"""Drill: PostgreSQL crashes and restarts while usage flows. The enforcer never needs it; the rater
retries its batches until PostgreSQL is back, and every event accepted meanwhile is rated exactly
once (no loss, no double charge), without restarting any process.

PostgreSQL here is a private server (the pgserver wheel's binaries) so the test can crash it:
`pg_ctl stop -m immediate` is a crash for its clients (no shutdown checkpoint, connections cut).
"""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from control.accounts import api_keys, customers, plans, wallets
from rater.schema import migrate
from tests.rater.conftest import PLAN, expected, pg_totals, redis_state
from tests.rater.processes import RaterProcess
from tests.rater.test_service import _wait
from tests.servers import run_enforcer
from tests.tenants import DECISION_ENV, uid
from tollgate.money import format_micros

START_WALLET = 50_000_000


class PrivatePostgres:
    """A PostgreSQL of this test only, on a unix socket, that can be crashed and started again."""

    def __init__(self, data_dir):
        import pgserver  # noqa: PLC0415  (the `embedded` extra, installed for the tests)

        self.server = pgserver.get_server(data_dir, cleanup_mode="stop")
        self.dsn = self.server.get_uri()

    def crash(self) -> None:
        from pgserver._commands import pg_ctl  # noqa: PLC0415

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def stop(self) -> None:
        self.server.cleanup()


async def _usage(http: httpx.AsyncClient, url: str, key: str, c: str, n: int, salt: int) -> list[dict]:
    events = []
    for i in range(n):
        eid = f"evt_{uuid.uuid4().hex[:12]}"
        m = [{"metric": "input_tokens", "value": 1000 + 7 * i + salt}, {"metric": "output_tokens", "value": 300 + i}]
        r = await http.post(f"{url}/v1/usage", json={
            "event_id": eid, "api_key": key, "correlation_id": f"req_{eid}", "event_type": "llm.completion",
            "properties": {"model": "m1"}, "measurements": m})
        assert r.status_code == 202, r.text
        events.append({"id": eid, "customer_id": c, "properties": {"model": "m1"}, "measurements": m})
    return events


@pytest.mark.slow
async def test_rater_survives_a_postgres_crash_and_rates_everything_once(tmp_path, redis, redis_server):
    pgsrv = PrivatePostgres(tmp_path / "pgdata")
    try:
        await migrate(pgsrv.dsn)
        pool = await asyncpg.create_pool(pgsrv.dsn, min_size=1, max_size=2)
        text = PLAN.format(pid=uid("plan"), mode="prepaid")
        applied = await plans.apply_plan(pool, redis, text)
        c = (await customers.create_customer(pool, redis, name="Drill", plan_id=applied["id"]))["id"]
        await wallets.topup(pool, redis, c, format_micros(START_WALLET))
        key = (await api_keys.create_api_key(pool, redis, c))["api_key"]
        await pool.close()

        env = {"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}
        with run_enforcer(env) as enf:
            rater = RaterProcess({**env, "TOLLGATE_DATABASE_URL": pgsrv.dsn}, ["--sweep-interval", "1"]).start()
            rater.wait_started()
            pool = await asyncpg.create_pool(pgsrv.dsn, min_size=1, max_size=2)
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    events = await _usage(http, enf.url, key, c, 20, 0)

                    async def rated(n: int):
                        async def cond() -> bool:
                            return (await pg_totals(pool, c))["events"] == n
                        return cond

                    await _wait(await rated(20), 60, "the first events to be rated", rater)
                    await pool.close()
                    pgsrv.crash()
                    # Usage keeps being accepted while PostgreSQL is down: the bus holds it.
                    events += await _usage(http, enf.url, key, c, 30, 1)
                    await asyncio.sleep(1.5)  # the rater tries, fails and backs off meanwhile
                    assert rater.alive(), rater.logs()[-3000:]
                    assert "retrying it" in rater.logs()  # it really met the outage
                    pgsrv.start()
                    pool = await asyncpg.create_pool(pgsrv.dsn, min_size=1, max_size=2)
                    events += await _usage(http, enf.url, key, c, 10, 2)
                    await _wait(await rated(60), 90, "every event after the restart", rater)
                    totals = await pg_totals(pool, c)
            finally:
                await pool.close()
                assert rater.stop() == 0, rater.logs()[-3000:]
        exp = expected(text, events)[c]
        assert totals == {"spend": exp["spend"], "wallet": exp["spend"], "invoice": 0, "events": 60,
                          "ledger": exp["spend"]}
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            state = await redis_state(client, c)
        finally:
            await client.aclose()
        assert state["wallet"] == START_WALLET - exp["spend"] and state["spend"] == exp["spend"]
    finally:
        pgsrv.stop()
