"""Fixtures of the settlement tests: a plan with three spend tiers and a prepaid customer, in
PostgreSQL and projected into Redis, plus helpers that place holds through the real check.lua.
The PostgreSQL database lives for the whole session, so every test gets its own ids."""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import pytest_asyncio

import lua
from control.projection.writes import project_api_key, project_customer, project_plan
from tollgate.redis_raw import eval_many
from tollgate.keys import CustomerKeys, api_key_hash
from tollgate.periods import period_of
from tollgate.plans import parse_plan
from tests.tenants import uid  # noqa: F401  (the tests' one id maker, re-exported)

RPM, TPM = 60, 60_000
_SEQS: dict[str, int] = {}


def next_seq(customer_id: str) -> int:
    """The customer's next settle sequence number, as the rating transaction would give it
    (the tests that settle without PostgreSQL number their items here, in creation order)."""
    _SEQS[customer_id] = _SEQS.get(customer_id, 0) + 1
    return _SEQS[customer_id]  # the free tier; build is x2, scale x10
BUILD_MICROS, SCALE_MICROS = 5_000_000, 50_000_000


def plan_doc(plan_id: str) -> dict:
    return {
        "id": plan_id, "currency": "USD", "billing_mode": "prepaid",
        "limits": {"requests_per_minute": RPM, "tokens_per_minute": TPM, "monthly_spend_cap": "1000",
                   "hold_ttl_seconds": 300},
        "tiers": [{"name": "free", "threshold": "0", "multiplier": 1},
                  {"name": "build", "threshold": "5", "multiplier": 2},
                  {"name": "scale", "threshold": "50", "multiplier": 10}],
        "charges": [{"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"}],
    }


@dataclass
class Customer:
    id: str
    key_id: str
    plan_id: str

    @property
    def keys(self) -> CustomerKeys:
        return CustomerKeys(self.id)


async def make_customer(pg, redis, mode: str = "prepaid", wallet_micros: int = 0) -> Customer:
    """Plan, customer and API key in PostgreSQL, projected into Redis; an optional top-up."""
    pid, cid, kid = uid("plan"), uid("cus"), uid("key")
    plan = parse_plan(plan_doc(pid))
    async with pg.acquire() as conn:
        await conn.execute("INSERT INTO plans (id, document) VALUES ($1, $2::jsonb)", pid, orjson.dumps(plan.document).decode())
        await conn.execute("INSERT INTO customers (id, name, plan_id, billing_mode, tier) VALUES ($1, 'T', $2, $3, 'free')",
                           cid, pid, mode)
        await conn.execute("INSERT INTO api_keys (id, customer_id, key_hash, prefix) VALUES ($1, $2, $3, 'tg_')",
                           kid, cid, api_key_hash(kid))
        if wallet_micros:
            await conn.execute("INSERT INTO wallet_transactions (id, customer_id, kind, amount_micros) VALUES ($1, $2, 'topup', $3)",
                               uid("top"), cid, wallet_micros)
    await project_plan(redis, plan)
    await project_customer(redis, cid, plan, mode, "free")
    await project_api_key(redis, api_key_hash(kid), kid, cid, pid, "active")
    if wallet_micros:
        await redis.incrby(CustomerKeys(cid).wallet, wallet_micros)
    return Customer(cid, kid, pid)


@pytest_asyncio.fixture
async def customer(pg, redis) -> Customer:
    return await make_customer(pg, redis, wallet_micros=100_000_000)


async def check(redis, c: Customer, cost: int, tokens: int, hold_ttl_ms: int = 300_000) -> dict:
    """One /v1/check decision through check.lua, as the enforcer runs it."""
    k, rid = c.keys, uid("req")
    hold_id = uid("hold")
    keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.spend(period_of(time.time())), k.request(rid),
            k.rate_requests(c.key_id), k.rate_tokens(c.key_id)]
    (r,) = await eval_many(redis, lua.load("check"), [(keys, [hold_id, 1, tokens, cost, hold_ttl_ms, 900_000, c.key_id])])
    r = [x.decode() if isinstance(x, bytes) else x for x in r]
    names = ["allowed", "reason", "hold_id", "retry_after_ms", "remaining_requests", "remaining_tokens",
             "available", "cap_left", "tier", "limit_requests", "limit_tokens", "reset_ms", "replayed"]
    return dict(zip(names, r)) | {"request_id": rid}


async def figures(redis, c: Customer, period: str | None = None) -> dict:
    """Everything settlement may change for a customer, as Redis has it."""
    k = c.keys
    period = period or period_of(time.time())
    wallet, held, spend = await redis.mget(k.wallet, k.held, k.spend(period))
    return {
        "wallet": int(wallet or 0), "held": int(held or 0), "spend": int(spend or 0),
        "holds": {h.decode(): v.decode() for h, v in (await redis.hgetall(k.holds)).items()},
        "hold_exp": {h.decode(): s for h, s in await redis.zrange(k.hold_expiry, 0, -1, withscores=True)},
        "tier": (await redis.hget(k.cfg, "tier")).decode(),
    }
