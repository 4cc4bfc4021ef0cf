"""Spend-tier promotions, recorded in PostgreSQL after settle.lua made them live in Redis.

Redis promotes (one HSET of cfg `tier`, so the very next check uses the new limits); this module
writes the audit row and the durable customers.tier that `tollgate redis rebuild` projects back.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rater.settlement import SettleItem, SettleResult

_INSERT = """
INSERT INTO tier_transitions (customer_id, period, old_tier, new_tier, event_id, spend_micros)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id) DO NOTHING
"""

# Only upwards, by the order of the plan's tiers: two promotions recorded out of order (or a
# replay of an old one) never take customers.tier back down within the period.
_PROMOTE = """
UPDATE customers c SET tier = $2
FROM plans p
WHERE c.id = $1 AND p.id = c.plan_id AND c.tier <> $2
  AND coalesce((SELECT e.o FROM jsonb_array_elements(p.document->'tiers') WITH ORDINALITY AS e(t, o)
                WHERE e.t->>'name' = $2), 0)
    > coalesce((SELECT e.o FROM jsonb_array_elements(p.document->'tiers') WITH ORDINALITY AS e(t, o)
                WHERE e.t->>'name' = c.tier), 0)
"""


async def record_promotions(conn, items: Sequence[SettleItem], results: Sequence[SettleResult]) -> None:
    """Write a tier_transitions row per promotion (idempotent by event id) and raise customers.tier.

    Replayed results carry the promotion of their first run, so calling this again after a crash
    between settle and here still records it, once.
    """
    rows = [(i.customer_id, i.period, r.promoted_from, r.promoted_to, i.event_id, r.spend_after_micros)
            for i, r in zip(items, results, strict=True) if r.promoted_to]
    if not rows:
        return
    async with conn.transaction():
        await conn.executemany(_INSERT, rows)
        await conn.executemany(_PROMOTE, [(r[0], r[3]) for r in rows])
