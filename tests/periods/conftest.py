"""Fixtures of the billing-period tests: the rating fixtures (control-plane customers, the
pipeline) and a real enforcer on the session's Redis."""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
import orjson
import pytest_asyncio

from control.accounts import api_keys, customers, plans
from tests.rater.conftest import make_customer, pipeline  # noqa: F401  (fixtures)
from tests.tenants import uid  # noqa: F401  (the tests' one id maker, re-exported)

RPM = 60  # requests/min of the first tier; build is x2, scale x10

# Postpaid, $1.00 per request: an event's spend is its `requests` in dollars.
PLAN = """
id: {pid}
billing_mode: postpaid
limits: {{requests_per_minute: 60, tokens_per_minute: 100000}}
billing_period: {{anchor_day: {anchor}}}
tiers:
  - {{name: free, threshold: "0", multiplier: 1}}
  - {{name: build, threshold: "5.00", multiplier: 2}}
  - {{name: scale, threshold: "50.00", multiplier: 10}}
charges:
  - {{id: requests, model: per_unit, metric: requests, unit_price: "1.00"}}
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def plan_text(anchor: int = 1) -> str:
    return PLAN.format(pid=uid("plan"), anchor=anchor)


def usage(customer_id: str, dollars: int, at: datetime, event_id: str | None = None) -> bytes:
    """A usage event as the enforcer publishes it, worth `dollars` on PLAN."""
    eid = event_id or uid("evt")
    return orjson.dumps({
        "kind": "usage", "id": eid, "customer_id": customer_id, "key_id": "key_1", "correlation_id": f"req_{eid}",
        "hold_id": None, "event_type": "llm.completion", "timestamp": iso(at), "properties": {},
        "measurements": [{"metric": "requests", "value": dollars}], "received_at": iso(at)})


@pytest_asyncio.fixture
async def tenant(pg, redis):
    """A customer on a fresh PLAN (anchor day as given), made through the control plane, with an
    API key: (customer id, api key)."""
    async def make(anchor: int = 1, text: str | None = None) -> tuple[str, str]:
        applied = await plans.apply_plan(pg, redis, text or plan_text(anchor))
        c = await customers.create_customer(pg, redis, name="Period test", plan_id=applied["id"])
        key = await api_keys.create_api_key(pg, redis, c["id"])
        return c["id"], key["api_key"]
    return make


@pytest_asyncio.fixture
async def http():
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def check(http, enforcer, api_key: str) -> httpx.Response:
    return await http.post(f"{enforcer.url}/v1/check", json={
        "api_key": api_key, "request_id": uid("req"), "dimensions": {}, "estimate": {"requests": 1}})
