"""A plan's hold estimate, projected for gateways that run lua/check.lua on Redis themselves (the
Kong plugin's in-gateway mode): they cannot run tollgate.plans, so the control plane writes what
`Plan.estimate_micros` needs for the estimates a gateway makes (requests, input and output tokens,
with the `model` dimension) as one hash per plan, `tg:plan:<id>:estimate`:

  hold_ttl_ms, anchor_day         the plan's hold TTL and billing anchor day
  <metric>                        unit price for a request naming no model the overrides know
  <metric>@<model>                unit price for that model (each model an override matches on)

Prices are in picounits (1e-12 of the currency unit), as integer strings: the gateway sums
quantity x price exactly in Lua numbers (see the plugin's redis_check.lua) and rounds up to micros
once, as estimate_micros does. A price with more than 12 decimals is rounded up: the hold can only
grow, never shrink (a hold too large is released at settlement).
"""
from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from tollgate.keys import plan_estimate_record
from tollgate.plans import Plan

GATEWAY_METRICS = ("requests", "input_tokens", "output_tokens")  # what a gateway's estimate counts
PICO = Decimal(10) ** 12
UNLISTED = "\x00"  # a model no override names: the default price (and any catch-all override)


def _pico(price: Decimal) -> str:
    return str(int((price * PICO).to_integral_value(ROUND_CEILING)))


def estimate_fields(plan: Plan) -> dict[str, str]:
    """The hash's fields (see the module's doc)."""
    fields = {"hold_ttl_ms": str(plan.hold_ttl_seconds * 1000), "anchor_day": str(plan.billing_anchor_day)}
    models = sorted({o.match["model"] for c in plan.charges for o in c.overrides if "model" in o.match})
    for metric in GATEWAY_METRICS:
        fields[metric] = _pico(plan.estimate_unit_price(metric, {"model": UNLISTED}))
        for model in models:
            fields[f"{metric}@{model}"] = _pico(plan.estimate_unit_price(metric, {"model": model}))
    return fields


async def project_estimate(redis, plan: Plan) -> None:
    """Write the plan's hash: the new fields first, then drop those it no longer has (a model no
    override names any more), so a gateway never reads it empty."""
    key, fields = plan_estimate_record(plan.id), estimate_fields(plan)
    stale = [f for f in await redis.hkeys(key) if (f.decode() if isinstance(f, bytes) else f) not in fields]
    await redis.hset(key, mapping=fields)
    if stale:
        await redis.hdel(key, *stale)
