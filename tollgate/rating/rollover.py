"""Rollover: unused included units carried into the next period, up to a cap (pure).

An `included` charge with `rollover: {max_units: N}` carries, per usage key (the charge's default
key, each override's, a customer's negotiated key), what its quota left unused:

    carried_out(P) = min(N, max(0, included(P) + carried_in(P) - used(P)))
    carried_in(P+1) = carried_out(P)

Units carried in roll again if they are not used, but never more than N are carried at once, so
nothing piles up (a customer idle for a year carries N, not 12 quotas). Units are carried only
between keys that exist in both periods, and only when the next period's plan has rollover on the
same included charge (a plan change to a plan without rollover drops them).

Exactness when the carry arrives late: the close of P (which computes carried_out) runs after a
grace period, when events of P+1 may already have been rated with the plain quota. The close then
runs the stages in mode "rollover" (run_rollover): a credit of F_new(q) - F_old(q) at P+1's
cumulatives so far, after which events are rated with the new quota. Events before + credit +
events after + close = the batch of P+1 with its final quota, in any order (the property test).
"""
from __future__ import annotations

from collections.abc import Mapping

from tollgate.rating.pricing.base import UsageKey
from tollgate.rating.pricing.engine import pricing_carried, pricing_for_key
from tollgate.plans import Charge, Plan


def keys_of(charge: Charge) -> list[str]:
    """Every dimension key a charge accumulates usage under (see Charge.dimension_key)."""
    return ["default", *(o.key or f"override{i}" for i, o in enumerate(charge.overrides))]


def carried_out(plan: Plan, cumulative: Mapping[UsageKey, int], carried_in: Mapping[UsageKey, int],
                next_plan: Plan | None = None) -> dict[UsageKey, int]:
    """Units each key of `plan`'s rollover charges carries out of a period with these totals and
    these units carried in (keys with nothing to carry are left out). `next_plan`: the plan of the
    next period, when known; only keys it can take (same included charge with rollover, same key)
    are carried."""
    out: dict[UsageKey, int] = {}
    for c in plan.charges:
        if c.model != "included" or c.rollover_max_units is None:
            continue
        for k in keys_of(c):
            allowance = pricing_carried(c, k, carried_in).included_units
            units = min(c.rollover_max_units, max(0, allowance - cumulative.get((c.id, k), 0)))
            if units:
                out[(c.id, k)] = units
    return out if next_plan is None else applicable(next_plan, out)


def applicable(plan: Plan, carried: Mapping[UsageKey, int]) -> dict[UsageKey, int]:
    """The carried units `plan` takes: keys of its included charges with rollover."""
    if not carried or not plan.has_rollover:
        return {}
    charges = {c.id: c for c in plan.charges if c.model == "included" and c.rollover_max_units is not None}
    out = {}
    for (cid, k), units in carried.items():
        c = charges.get(cid)
        if c is None or units <= 0:
            continue
        try:
            pricing_for_key(c, k)
        except ValueError:  # StateError: a key the plan no longer makes
            continue
        out[(cid, k)] = units
    return out


def allowances(plan: Plan, cumulative: Mapping[UsageKey, int], carried_in: Mapping[UsageKey, int]) -> list[dict]:
    """Per key of each included charge: its quota (included + carried in), what is used and left,
    and (rollover charges) what would be carried out if the period closed now. Units as ints."""
    out = []
    projected = carried_out(plan, cumulative, carried_in)
    for c in plan.charges:
        if c.model != "included":
            continue
        for k in keys_of(c):
            key = (c.id, k)
            base = pricing_for_key(c, k).included_units
            units_in = carried_in.get(key, 0)
            used = cumulative.get(key, 0)
            if not (base or units_in or used):
                continue
            out.append({"charge_id": c.id, "metric": c.metric, "dimension_key": k, "included_units": base,
                        "carried_in": units_in, "allowance": base + units_in, "used": used,
                        "remaining": max(0, base + units_in - used),
                        "carried_out": None if c.rollover_max_units is None else projected.get(key, 0)})
    return out
