"""Fixtures of the gateway tests: the real enforcer (tests/servers.py) on the session's Redis, an
LLM-like upstream, and tenants provisioned through the control plane's Redis projection."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import orjson
import pytest
import pytest_asyncio

from rater.projection import project_api_key, project_customer, project_plan, set_wallet
from tests.gateways.harness import Upstream
from tests.servers import run_enforcer
from tollgate.keys import EVENTS_STREAM, CustomerKeys, api_key_hash
from tollgate.plans import Plan, parse_plan

# Decisions must be real even on a busy shared machine: a generous Redis deadline in the enforcer.
ENFORCER_ENV = {"TOLLGATE_CHECK_DEADLINE_MS": "1000", "TOLLGATE_BUS": "redis"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def plan_doc(request_price: str | None = None, **limits) -> dict:
    doc = {
        "id": uid("plan"),
        "billing_mode": "prepaid",
        "limits": {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000},
        "charges": [
            {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
            {"id": "out", "model": "per_unit", "metric": "output_tokens", "unit_price": "0.000015"},
        ],
    }
    if request_price is not None:
        doc["charges"].append({"id": "req", "model": "per_unit", "metric": "requests", "unit_price": request_price})
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


async def provision(redis, wallet: int = 100_000_000, mode: str = "prepaid", request_price: str | None = None,
                    **limits) -> Tenant:
    plan = parse_plan(plan_doc(request_price, **limits))
    t = Tenant(f"tg_test_{uuid.uuid4().hex}", uid("cust"), uid("key"), plan)
    await project_plan(redis, plan)
    await project_customer(redis, t.customer_id, plan, mode, plan.tiers[0].name)
    await project_api_key(redis, api_key_hash(t.api_key), t.key_id, t.customer_id, plan.id, "active")
    await set_wallet(redis, t.customer_id, wallet)
    return t


async def events(redis, kind: str) -> list[dict]:
    out = [orjson.loads(f[b"event"]) for _, f in await redis.xrange(EVENTS_STREAM)]
    return [e for e in out if e["kind"] == kind]


async def wait_event(redis, kind: str, field: str, value: str, timeout: float = 5.0) -> dict:
    """The first event of a kind whose field has that value, waiting for the enforcer's batches."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in await events(redis, kind) if e.get(field) == value]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} event with {field}={value!r} within {timeout} s; "
                                 f"{kind} events: {await events(redis, kind)}")
        await asyncio.sleep(0.05)


async def wait_usage(redis, correlation_id: str, timeout: float = 5.0) -> dict:
    """The usage event the gateway reported for a request, as the enforcer put it on the bus."""
    return await wait_event(redis, "usage", "correlation_id", correlation_id, timeout)


@pytest.fixture(scope="module")
def enforcer(redis_server):
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **ENFORCER_ENV}) as server:
        yield server


@pytest.fixture(scope="module")
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def tenant(redis) -> Tenant:
    return await provision(redis)
