"""A whole tollgate on loopback for end-to-end tests: `tollgate-control`, the enforcer and
`tollgate-rater` as real processes on a Redis of their own (the session Redis is emptied by other
tests' fixtures) and the session's PostgreSQL, with HTTP clients on the admin API and the gateway
side (tests/products, tests/console)."""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis

from tests.rater.processes import RaterProcess
from tests.servers import ControlProcess, EnforcerProcess
from tests.tenants import mark_projected
from tollgate.local_services import start_redis

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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


@asynccontextmanager
async def running_stack(pg_dsn: str, token: str):
    """The three processes, started and stopped; the rater must stop gracefully (nothing half done)."""
    own = start_redis()
    client = Redis.from_url(own.url)
    await mark_projected(client)  # a fresh, completely projected Redis: the control process does not rebuild it
    await client.aclose()
    env = {"TOLLGATE_REDIS_URL": own.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_ADMIN_TOKEN": token, "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    procs: list = []
    try:
        # holds are released by settlement alone (no sweeper): a released hold is the usage's doing
        procs.append(RaterProcess(env, ["--sweep-interval", "0"]).start())
        procs.append(ControlProcess(env).start())
        procs.append(EnforcerProcess(env).start())
        procs[0].wait_started()
        rater, control, enforcer = procs
        async with httpx.AsyncClient(base_url=control.url, timeout=10,
                                     headers={"authorization": f"Bearer {token}"}) as admin, \
                httpx.AsyncClient(base_url=enforcer.url, timeout=10) as gateway:
            yield Stack(control, enforcer, rater, admin, gateway)
        assert rater.stop() == 0, rater.logs()[-3000:]
    finally:
        for p in reversed(procs):
            p.stop()
        for p in procs:
            if hasattr(p, "cleanup"):
                p.cleanup()
        own.stop()
