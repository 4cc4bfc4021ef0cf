"""Negotiated prices: a customer's per-dimension prices on top of its plan (pure).

A customer may have a price of its own for a usage charge of its plan, for every event or only
for those whose dimensions match (a model, a tool): e.g.
    {"charge_id": "output_tokens", "match": {"model": "gpt-4o"}, "unit_price": "0.000008"}
It becomes an override placed before the plan's own (first match wins, as in a plan document),
so the rating engine needs nothing new. Usage is accumulated under a dimension key of its own,
"n.<hash of charge and match>", stable whatever else changes; the plan's overrides keep the keys
they have without it ("override<i>"), so a customer's period cumulatives mean the same before
and after its negotiated prices change.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import orjson

from tollgate.plans import Charge, Override, Plan, PlanError, Pricing, _parse_pricing
from tollgate.rating.pricing.cost import COST_CHARGE

PRICED_MODELS = ("per_unit", "graduated", "volume", "included", "composite")
PRICE_FIELDS = ("unit_price", "tiers", "included_units")
MAX_PRICES = 200


@dataclass(frozen=True)
class NegotiatedPrice:
    charge_id: str
    match: dict[str, str]
    pricing: Pricing

    @property
    def key(self) -> str:
        sig = orjson.dumps([self.charge_id, self.match], option=orjson.OPT_SORT_KEYS)
        return "n." + hashlib.sha256(sig).hexdigest()[:12]


def parse_prices(plan: Plan, raw: Any, field: str = "prices") -> tuple[NegotiatedPrice, ...]:
    """Validate a customer's price list against `plan`; PlanError names the field at fault."""
    if not isinstance(raw, list):
        raise PlanError(field, "must be a list of {charge_id, match, unit_price | tiers | included_units}")
    if len(raw) > MAX_PRICES:
        raise PlanError(field, f"at most {MAX_PRICES} prices")
    charges = {c.id: c for c in plan.charges}
    out: list[NegotiatedPrice] = []
    for i, p in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(p, dict):
            raise PlanError(f, "must be a mapping")
        for name in p:
            if name not in ("charge_id", "match", *PRICE_FIELDS):
                raise PlanError(f"{f}.{name}", "unknown field; expected charge_id, match, " + ", ".join(PRICE_FIELDS))
        charge = charges.get(p.get("charge_id")) if isinstance(p.get("charge_id"), str) else None
        if charge is None or charge.model not in PRICED_MODELS:
            raise PlanError(f"{f}.charge_id", f"no usage charge {p.get('charge_id')!r} in plan {plan.id!r}")
        match = p.get("match", {})
        if not isinstance(match, dict) or not all(isinstance(k, str) and k for k in match):
            raise PlanError(f"{f}.match", "must be a mapping of dimension name -> value")
        price = NegotiatedPrice(charge.id, {k: str(v) for k, v in match.items()},
                                _parse_pricing(p, charge.model, f))
        if any(o.key == price.key for o in out):
            raise PlanError(f"{f}.match", f"a second price for charge {charge.id!r} with this match")
        out.append(price)
    return tuple(out)


def with_prices(plan: Plan, prices: tuple[NegotiatedPrice, ...]) -> Plan:
    """The customer's effective plan: `plan` with the negotiated prices as first overrides.
    A price for a charge the plan does not have (after a plan change) is left out."""
    if not prices:
        return plan
    charges: list[Charge] = []
    for c in plan.charges:
        mine = tuple(Override(p.match, p.pricing, p.key) for p in prices if p.charge_id == c.id)
        if mine:
            own = tuple(o if o.key else replace(o, key=f"override{i}") for i, o in enumerate(c.overrides))
            c = replace(c, overrides=mine + own)
        charges.append(c)
    return replace(plan, charges=tuple(charges))


def effective_plan(plan: Plan, raw: Any) -> Plan:
    """with_prices of a stored list; entries the plan cannot take (its charge is gone after a
    plan change) are skipped, not fatal: rating never stops on a stale negotiated price."""
    if not raw:
        return plan
    if isinstance(raw, (str, bytes)):
        raw = orjson.loads(raw)
    keep = []
    for p in raw:
        try:
            keep += parse_prices(plan, [p])
        except PlanError:
            continue
    return with_prices(plan, tuple(keep))


def unpriced_keys(plan: Plan, keys: Any) -> list[tuple[str, str]]:
    """The usage keys (charge id, dimension key) of a period `plan` could not price: what a change
    of plan or prices within a period must not leave behind (the engine refuses such a period)."""
    charges = {c.id: c for c in plan.charges}
    bad = []
    for cid, dim in keys:
        if cid == COST_CHARGE:
            continue  # a cost cumulative (tollgate.rating.pricing.cost): priced by its key alone
        c = charges.get(cid)
        base = dim.split(":", 1)[0]  # a composite's metered key: "<dimension key>:<metric>"
        if c is None or c.model not in PRICED_MODELS:
            bad.append((cid, dim))
        elif base != "default" and not any((o.key or f"override{i}") == base for i, o in enumerate(c.overrides)):
            bad.append((cid, dim))
    return bad
