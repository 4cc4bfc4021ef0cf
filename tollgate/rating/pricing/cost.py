"""What usage costs the provider: C(q) = q * unit_cost per metric and dimension (plan `costs`).

Costs are exact the way prices are: an event moving a cost key's period cumulative from a to b
costs round(C(b)) - round(C(a)) micros, so the per-event costs of a period add up to
round(C(total)) per key in any order (batch_lines). The cost key is the metric and the unit
cost itself, `<metric>@<unit cost>` (e.g. `input_tokens@0.00000015`), accumulated in the
period's cumulatives under the pseudo charge COST_CHARGE: events at the same unit cost share a
cumulative whichever override gave it, and a cost changed mid-period (a new catalog version)
starts a key of its own instead of repricing what was accumulated at the old one.

A unit cost of 0 costs nothing and keeps no cumulative; a plan without costs pays nothing here.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tollgate.plans import MetricCost
from tollgate.rating.pricing.base import ChargeLine, UsageKey, micros_ratio, round_ratio

# The cumulatives' charge id of cost keys: '$' is not in a charge id (tollgate.keys.ID_PATTERN).
COST_CHARGE = "$cost"
# Ledger lines that carry only a cost (a metric measured but billed by no charge in this event,
# e.g. a failed call a charge does not bill): kind and charge id.
COST_KIND = "cost"


def cost_key(metric: str, unit_cost: Decimal) -> str:
    """`<metric>@<unit cost as plain decimal>`: '@' is in neither a metric name nor a number."""
    text = format(unit_cost.normalize(), "f") if unit_cost else "0"
    return f"{metric}@{text}"


def parse_cost_key(key: str) -> tuple[str, Decimal]:
    metric, _, unit = key.rpartition("@")
    return metric, Decimal(unit)


class MetricCosts:
    """One metric's cost per dimension, for the per-event path: (key, numerator, denominator) of
    the unit cost in micros for the default and each override, looked up by the override index."""

    __slots__ = ("index", "entries", "default")

    def __init__(self, mc: MetricCost):
        self.index = mc.override_index if mc.overrides else None
        self.default = self._entry(mc.metric, mc.unit_cost)
        self.entries = tuple(self._entry(mc.metric, o.unit_cost) for o in mc.overrides)

    @staticmethod
    def _entry(metric: str, unit_cost: Decimal) -> tuple[str, int, int]:
        r = micros_ratio(unit_cost)
        return cost_key(metric, unit_cost), r.numerator, r.denominator

    def entry(self, dimensions: Mapping[str, Any]) -> tuple[str, int, int]:
        if self.index is None:
            return self.default
        i = self.index.lookup(dimensions)
        return self.default if i is None else self.entries[i]


def plan_costs(costs: tuple[MetricCost, ...]) -> dict[str, MetricCosts]:
    return {mc.metric: MetricCosts(mc) for mc in costs}


def micros(q: int, n: int, d: int) -> int:
    """round(C(q)) for a unit cost of n / d micros."""
    return q * n if d == 1 else round_ratio(q * n, d)


def batch_lines(totals: Mapping[UsageKey, int]) -> list[ChargeLine]:
    """Batch: the period's cost per cost key from its totals, one line each (amount 0). Equal,
    key by key, to the sum of the per-event costs of any events with these totals."""
    lines = []
    for (cid, key), q in sorted(totals.items()):
        if cid == COST_CHARGE and q:
            metric, unit = parse_cost_key(key)
            r = micros_ratio(unit)
            lines.append(ChargeLine(COST_KIND, COST_KIND, COST_KIND, metric, key, q, None, 0, (), q,
                                    micros(q, r.numerator, r.denominator)))
    return lines
