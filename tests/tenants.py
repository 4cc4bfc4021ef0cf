"""Tenants for tests that talk to a real enforcer: a plan, customer and API key of their own,
projected into Redis through the control plane's projection (control.projection.writes), and the events
the enforcer put on the Redis stream. Tenants exist in Redis only (not in PostgreSQL), so the
projection marker is set by hand: the Redis they are in counts as completely projected, and an
unknown key is 401 (without the marker the enforcer would fail open, `not_projected`)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from control.projection.writes import project_api_key, project_customer, project_plan, set_wallet
from tollgate.keys import EVENTS_STREAM, PROJECTION_MARKER, CustomerKeys, api_key_hash
from tollgate.plans import Plan, parse_plan

# Decisions under test must be real even on a busy 2-core machine: a generous Redis deadline;
# the fail-open tests start their own enforcers with short deadlines of their own.
DECISION_ENV = {"TOLLGATE_CHECK_DEADLINE_MS": "1000", "TOLLGATE_BUS": "redis"}


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def plan_doc(request_price: str | None = "0.01", **limits) -> dict:
    """A plan priced per request ($0.01 unless said) and per token, generous unless `limits` say otherwise."""
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

    @property
    def key_hash(self) -> str:
        return api_key_hash(self.api_key)


async def provision(redis, doc: dict | None = None, mode: str = "prepaid", tier: str | None = None,
                    wallet: int = 100_000_000, spend_cap: int | None = None, status: str = "active",
                    request_price: str | None = "0.01", **limits) -> Tenant:
    """A new plan, customer and API key, projected into Redis as the control plane does."""
    plan = parse_plan(doc or plan_doc(request_price, **limits))
    t = Tenant(f"tg_test_{uuid.uuid4().hex}", uid("cust"), uid("key"), plan)
    await project_tenant(redis, t, mode, tier, wallet, spend_cap, status)
    return t


async def project_tenant(redis, t: Tenant, mode: str = "prepaid", tier: str | None = None,
                         wallet: int = 100_000_000, spend_cap: int | None = None, status: str = "active") -> None:
    """(Re)write a tenant's records, e.g. after a Redis restart emptied it (what `redis rebuild` does)."""
    await project_plan(redis, t.plan)
    await project_customer(redis, t.customer_id, t.plan, mode, tier or t.plan.tiers[0].name, spend_cap)
    await project_api_key(redis, t.key_hash, t.key_id, t.customer_id, t.plan.id, status)
    await set_wallet(redis, t.customer_id, wallet)
    await mark_projected(redis)


async def mark_projected(redis) -> None:
    """What a finished `redis rebuild` leaves: this Redis holds the whole projection."""
    await redis.set(PROJECTION_MARKER, "tests")



def check_body(t: Tenant | str, request_id: str | None = None, **estimate) -> dict:
    return {"api_key": t if isinstance(t, str) else t.api_key, "request_id": request_id or uid("req"),
            "dimensions": {"model": "claude-sonnet-4-6"}, "estimate": estimate or {"requests": 1}}


async def stream_events(redis, kind: str | None = None) -> list[dict]:
    events = [orjson.loads(f[b"event"]) for _, f in await redis.xrange(EVENTS_STREAM)]
    return [e for e in events if kind is None or e["kind"] == kind]
