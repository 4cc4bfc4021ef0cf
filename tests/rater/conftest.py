"""Fixtures of the rating tests: plans and customers made through the control plane (so Redis is
projected exactly as in production), events shaped as the enforcer publishes them, and the
expected figures computed by the pure stages over the same events."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import orjson
import pytest
import pytest_asyncio

from control.accounts import customers, plans, wallets
from rater.pipeline import Pipeline, decompose
from tollgate.rating.stages.pipeline import run_event
from tollgate.keys import CustomerKeys
from tollgate.money import format_micros
from tollgate.periods import period_of
from tollgate.plans import load_plan_text
from tests.tenants import uid  # noqa: F401  (the tests' one id maker, re-exported)

# Graduated output tokens so per-event rounding and tier crossings are exercised; prices below a
# micro per token so the F(after) - F(before) rounding matters.
PLAN = """
id: {pid}
billing_mode: {mode}
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
tiers:
  - {{name: free, threshold: "0", multiplier: 1}}
  - {{name: build, threshold: "5.00", multiplier: 2}}
charges:
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.0000031"}}
  - id: output_tokens
    model: graduated
    metric: output_tokens
    tiers:
      - {{up_to: 50000, unit_price: "0.0000151"}}
      - {{up_to: null, unit_price: "0.0000107"}}
  - {{id: cache_read_tokens, model: per_unit, metric: cache_read_tokens, unit_price: "0.00000033"}}
"""

NOW = datetime.now(timezone.utc)
TS = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
PERIOD = period_of(NOW)


def usage(customer_id: str, input_tokens: int = 1500, output_tokens: int = 800, *, cache: int = 0,
          event_id: str | None = None, hold_id: str | None = None, ts: str = TS, model: str = "m1",
          extra: list | None = None, **fields) -> dict:
    eid = event_id or uid("evt")
    m = [{"metric": "input_tokens", "value": input_tokens}, {"metric": "output_tokens", "value": output_tokens}]
    if cache:
        m.append({"metric": "cache_read_tokens", "value": cache})
    ev = {"kind": "usage", "id": eid, "customer_id": customer_id, "key_id": "key_1", "plan_id": None,
          "correlation_id": f"req_{eid}", "hold_id": hold_id, "event_type": "llm.completion",
          "timestamp": ts, "properties": {"model": model}, "measurements": m + (extra or []),
          "received_at": ts}
    ev.update(fields)
    return ev


def raw(events: list[dict]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def expected(plan_text: str, events: list[dict], modes: dict[str, str] | None = None,
             wallets_start: dict[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Per customer: spend, wallet debits, invoice part, by the pure stages in the given order."""
    plan = load_plan_text(plan_text)
    cum: dict[str, dict] = defaultdict(dict)
    wallet = dict(wallets_start or {})
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"spend": 0, "wallet": 0, "invoice": 0})
    for e in events:
        c = e["customer_id"]
        mode = (modes or {}).get(c, plan.billing_mode)
        ctx = run_event(plan, e.get("properties") or {}, decompose(e["measurements"]), cum[c],
                        billing_mode=mode, wallet_available_micros=wallet.get(c, 0),
                        wallet_paid_micros=out[c]["wallet"], invoice_due_micros=out[c]["invoice"])
        cum[c] = ctx.cumulative_after
        wallet[c] = wallet.get(c, 0) - ctx.wallet_micros
        o = out[c]
        o["spend"] += ctx.total_micros
        o["wallet"] += ctx.wallet_micros
        o["invoice"] += ctx.invoice_micros
    return dict(out)


@pytest.fixture
def plan_for():
    """Plan text for a billing mode, under a fresh id."""
    def make(mode: str = "postpaid", text: str = PLAN) -> str:
        return text.format(pid=uid("plan"), mode=mode)
    return make


@pytest_asyncio.fixture
async def make_customer(pg, redis):
    """A customer on `plan_text` (applied if new), with an optional wallet top-up (micros)."""
    async def make(plan_text: str, *, wallet_micros: int = 0, billing_mode: str | None = None) -> str:
        applied = await plans.apply_plan(pg, redis, plan_text)
        c = await customers.create_customer(pg, redis, name="Test", plan_id=applied["id"], billing_mode=billing_mode)
        if wallet_micros:
            await wallets.topup(pg, redis, c["id"], format_micros(wallet_micros))
        return c["id"]
    return make


@pytest.fixture
def pipeline(pg, redis) -> Pipeline:
    return Pipeline(pg, redis, cache_ttl_s=0)


async def redis_state(redis, customer_id: str, period: str = PERIOD) -> dict[str, int]:
    k = CustomerKeys(customer_id)
    wallet, spend, held = await redis.mget(k.wallet, k.spend(period), k.held)
    return {"wallet": int(wallet or 0), "spend": int(spend or 0), "held": int(held or 0)}


async def pg_totals(pg, customer_id: str) -> dict[str, int]:
    row = await pg.fetchrow(
        """SELECT coalesce(sum(spend_micros), 0)::int8 AS spend, coalesce(sum(wallet_micros), 0)::int8 AS wallet,
                  coalesce(sum(invoice_micros), 0)::int8 AS invoice, count(*) AS events
           FROM processed_events WHERE customer_id = $1 AND kind = 'usage'""", customer_id)
    ledger = await pg.fetchval("SELECT coalesce(sum(amount_micros), 0)::int8 FROM ledger_lines WHERE customer_id = $1",
                               customer_id)
    return {**dict(row), "ledger": ledger}
