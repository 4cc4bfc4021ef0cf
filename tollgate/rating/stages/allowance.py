"""Stage 1, allowance: attribute an event's units to the included quota or to overage.

The price of included units lives in one place, the `included` charge model (tollgate.rating.pricing.included);
this stage only reports the attribution (for the ledger and "units left" displays) with
included.split, and leaves the measurements unchanged so nothing is priced twice.
"""
from __future__ import annotations

from tollgate.rating.pricing import included
from tollgate.rating.pricing.engine import pricing_carried, pricing_for_key
from tollgate.rating.stages.context import Allowance, RatingContext


def run(ctx: RatingContext) -> RatingContext:
    out: list[Allowance] = []
    for c in ctx.plan.charges:
        if c.model != "included":
            continue
        if ctx.mode == "event":
            q = ctx.measurements.get(c.metric, 0)
            if not q:
                continue
            dim_key = c.dimension_key(ctx.dimensions)
            moves = [(dim_key, ctx.cumulative.get((c.id, dim_key), 0), q)]
        elif ctx.mode == "batch":
            moves = sorted((k, 0, q) for (cid, k), q in ctx.cumulative.items() if cid == c.id and q)
        else:  # close, rollover: no usage moves
            continue
        for dim_key, a, q in moves:
            # units carried in add to the quota of their key
            pricing = pricing_carried(c, dim_key, ctx.carried_in) if ctx.carried_in else pricing_for_key(c, dim_key)
            inc, over = included.split(pricing, a, a + q)
            out.append(Allowance(c.id, dim_key, c.metric, inc, over, included.remaining(pricing, a + q)))
    ctx.allowances = tuple(out)
    return ctx
