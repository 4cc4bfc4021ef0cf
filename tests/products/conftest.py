"""One product type per module, end to end through real processes on loopback: `tollgate-control`
(the admin API: plans, cost catalogs, the customer's hierarchy, top-ups, the read API), the
enforcer (/v1/check, /v1/usage) and `tollgate-rater`, on a Redis of the module's own (the session
Redis is emptied by other tests' fixtures) and the session's PostgreSQL. Everything a test sets up
goes through HTTP, as an operator and a gateway would.

Expected amounts are computed in the tests themselves from the example plan's prices (Decimal),
never by the engine."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest_asyncio
from redis.asyncio import Redis

from tests.rater.processes import RaterProcess
from tests.servers import ControlProcess, EnforcerProcess
from tests.tenants import mark_projected
from tollgate.local_services import start_redis

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOKEN = "products-admin-token"


def micros(amount: Decimal) -> int:
    """Exact micros of a Decimal amount; the tests choose quantities whose amounts need no rounding."""
    m = amount * 1_000_000
    assert m == m.to_integral_value(), f"{amount} is not a whole number of micros"
    return int(m)


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class Stack:
    control: ControlProcess
    enforcer: EnforcerProcess
    rater: RaterProcess
    admin: httpx.AsyncClient  # on the control process, with the admin token
    gateway: httpx.AsyncClient  # on the enforcer

    async def call(self, method: str, path: str, body: dict | None = None, expect: int | tuple = (200, 201),
                   **kw) -> dict:
        r = await self.admin.request(method, path, json=body, **kw)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), f"{method} {path}: {r.text}"
        return r.json()

    async def apply(self, path: str, what: str = "plans") -> dict:
        """A YAML document of examples/ as the operator applies it (`tollgate plans apply`)."""
        return await self.call("POST", f"/admin/{what}", content=(EXAMPLES / path).read_bytes(),
                               headers={"content-type": "application/yaml"})

    async def customer(self, plan_id: str, topup: str) -> str:
        cid = (await self.call("POST", "/admin/customers", {"name": "Acme", "plan_id": plan_id}, 201))["id"]
        await self.call("POST", f"/admin/customers/{cid}/wallet/topups", {"amount": topup, "id": uid("topup")}, 201)
        return cid

    async def team(self, cid: str, name: str) -> str:
        return (await self.call("POST", f"/admin/customers/{cid}/teams", {"name": name}, 201))["id"]

    async def app(self, cid: str, team_id: str, kind: str, name: str, **limits) -> str:
        body = {"team_id": team_id, "kind": kind, "name": name, "limits": limits}
        return (await self.call("POST", f"/admin/customers/{cid}/apps", body, 201))["id"]

    async def key(self, cid: str, app_id: str) -> tuple[str, str]:
        k = await self.call("POST", f"/admin/customers/{cid}/keys", {"app_id": app_id}, 201)
        return k["id"], k["api_key"]

    async def check(self, api_key: str, dimensions: dict, estimate: dict, expect: int = 200) -> dict:
        r = await self.gateway.post("/v1/check", json={"api_key": api_key, "request_id": uid("req"),
                                                       "dimensions": dimensions, "estimate": estimate})
        assert r.status_code == expect, r.text
        return r.json()

    async def usage(self, api_key: str, hold_id: str | None, event_type: str, properties: dict,
                    measurements: dict[str, int]) -> str:
        """Reports one event; returns its event id."""
        event_id = uid("evt")
        body = {"event_id": event_id, "api_key": api_key, "event_type": event_type, "properties": properties,
                "measurements": [{"metric": m, "value": v} for m, v in measurements.items()]}
        if hold_id:
            body["hold_id"] = hold_id
        r = await self.gateway.post("/v1/usage", json=body)
        assert r.status_code == 202, r.text
        return event_id

    async def until(self, cond, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not await cond():
            assert self.rater.alive(), f"the rater exited waiting for {what}:\n{self.rater.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.rater.logs()[-3000:]}"
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module")
async def stack(pg_dsn):
    own = start_redis()
    client = Redis.from_url(own.url)
    await mark_projected(client)  # a fresh, completely projected Redis: the control process does not rebuild it
    await client.aclose()
    env = {"TOLLGATE_REDIS_URL": own.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_ADMIN_TOKEN": TOKEN, "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    procs: list = []
    try:
        # holds are released by settlement alone (no sweeper): a released hold is the usage's doing
        procs.append(RaterProcess(env, ["--sweep-interval", "0"]).start())
        procs.append(ControlProcess(env).start())
        procs.append(EnforcerProcess(env).start())
        procs[0].wait_started()
        rater, control, enforcer = procs
        async with httpx.AsyncClient(base_url=control.url, timeout=10,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as admin, \
                httpx.AsyncClient(base_url=enforcer.url, timeout=10) as gateway:
            yield Stack(control, enforcer, rater, admin, gateway)
        assert rater.stop() == 0, rater.logs()[-3000:]  # graceful: nothing left half done
    finally:
        for p in reversed(procs):
            p.stop()
        for p in procs:
            if hasattr(p, "cleanup"):
                p.cleanup()
        own.stop()


async def wait_settled(pg, stack: Stack, cid: str, events: int, holds: int) -> None:
    """Until the rater has rated `events` usage events of the customer and settled `holds` holds."""
    async def done() -> bool:
        n = await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", cid)
        h = await pg.fetchval("SELECT count(*) FROM holds WHERE customer_id = $1 AND status = 'settled'", cid)
        return (n, h) == (events, holds)
    await stack.until(done, f"{events} events rated and {holds} holds settled")


async def ledger(pg, cid: str) -> set[tuple]:
    """The customer's ledger lines: (event, charge, kind, metric, quantity, amount, cost, key, team, app)."""
    rows = await pg.fetch("SELECT event_id, charge_id, kind, metric, quantity, amount_micros, cost_micros,"
                          " key_id, team_id, app_id FROM ledger_lines WHERE customer_id = $1", cid)
    return {tuple(r) for r in rows}


async def holds(pg, cid: str) -> dict[str, tuple]:
    """hold id -> (status, amount placed, amount released, the event that settled it)."""
    rows = await pg.fetch("SELECT hold_id, status, amount_micros, released_micros, event_id FROM holds"
                          " WHERE customer_id = $1", cid)
    return {r["hold_id"]: (r["status"], r["amount_micros"], r["released_micros"], r["event_id"]) for r in rows}
