"""Enforcer tests: a real enforcer process on the session's Redis, provisioned through the
control plane's Redis projection (rater.projection). Every test provisions its own plan, customer
and key ids, so the enforcer's cache never carries one test's keys into another."""
from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass

import httpx
import orjson
import pytest
import pytest_asyncio

from rater.projection import project_api_key, project_customer, project_plan, set_wallet
from tests.servers import run_enforcer
from tollgate.keys import EVENTS_STREAM, CustomerKeys, api_key_hash
from tollgate.plans import Plan, parse_plan

# Decisions under test must be real even on a busy 2-core machine: a generous deadline here;
# the fail-open tests start their own enforcers with the 3 ms default.
DECISION_ENV = {"TOLLGATE_CHECK_DEADLINE_MS": "1000", "TOLLGATE_BUS": "redis"}


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def plan_doc(**limits) -> dict:
    """A plan priced per request ($0.01) and per token, generous unless `limits` say otherwise."""
    doc = {
        "id": uid("plan"),
        "billing_mode": "prepaid",
        "limits": {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000},
        "charges": [
            {"id": "req", "model": "per_unit", "metric": "requests", "unit_price": "0.01"},
            {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
            {"id": "out", "model": "per_unit", "metric": "output_tokens", "unit_price": "0.000015"},
        ],
    }
    doc["limits"].update(limits)
    return doc


@dataclass
class Tenant:
    api_key: str
    customer_id: str
    key_id: str
    plan: Plan

    @property
    def keys(self) -> CustomerKeys:
        return CustomerKeys(self.customer_id)

    @property
    def key_hash(self) -> str:
        return api_key_hash(self.api_key)


async def provision(redis, doc: dict | None = None, mode: str = "prepaid", tier: str | None = None,
                    wallet: int = 100_000_000, spend_cap: int | None = None, status: str = "active") -> Tenant:
    """A new plan, customer and API key, projected into Redis as the control plane does."""
    t = Tenant(f"tg_test_{uuid.uuid4().hex}", uid("cust"), uid("key"), parse_plan(doc or plan_doc()))
    await project_tenant(redis, t, mode, tier, wallet, spend_cap, status)
    return t


async def project_tenant(redis, t: Tenant, mode: str = "prepaid", tier: str | None = None,
                         wallet: int = 100_000_000, spend_cap: int | None = None, status: str = "active") -> None:
    """(Re)write a tenant's records, e.g. after a Redis restart emptied it (what `redis rebuild` does)."""
    await project_plan(redis, t.plan)
    await project_customer(redis, t.customer_id, t.plan, mode, tier or t.plan.tiers[0].name, spend_cap)
    await project_api_key(redis, t.key_hash, t.key_id, t.customer_id, t.plan.id, status)
    await set_wallet(redis, t.customer_id, wallet)


def check_body(t: Tenant | str, request_id: str | None = None, **estimate) -> dict:
    return {"api_key": t if isinstance(t, str) else t.api_key, "request_id": request_id or uid("req"),
            "dimensions": {"model": "claude-sonnet-4-6"}, "estimate": estimate or {"requests": 1}}


async def stream_events(redis, kind: str | None = None) -> list[dict]:
    events = [orjson.loads(f[b"event"]) for _, f in await redis.xrange(EVENTS_STREAM)]
    return [e for e in events if kind is None or e["kind"] == kind]


@pytest.fixture(scope="module")
def enforcer(redis_server):
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}) as server:
        yield server


@pytest_asyncio.fixture
async def http():
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        yield client


class BlackHole:
    """A TCP server that accepts connections and never says a word (a hung Redis)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)  # kept open, never read from nor written to
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()
