"""Where a spend stands among a plan's tiers: pure, shared by the rater (promotion, period close)
and the control plane (rebuild, preview)."""
from __future__ import annotations

from tollgate.plans import Plan


def tier_reached(plan: Plan, spend_micros: int) -> int:
    """Index of the highest tier whose threshold `spend_micros` meets (0: the first tier)."""
    return max((i for i, t in enumerate(plan.tiers) if t.threshold_micros <= spend_micros), default=0)


def tier_index(plan: Plan, name: str | None) -> int:
    names = [t.name for t in plan.tiers]
    return names.index(name) if name in names else 0
