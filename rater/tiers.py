"""Spend tiers: promotions within a period, and the tier a customer enters the next period with.

Within a period, Redis promotes (settle.lua: one HSET of cfg `tier`, so the very next check uses
the new limits) and `record_promotions` writes the audit row and the durable customers.tier that
`tollgate redis rebuild` projects back. Only upwards: no demotion within a period.

At the period boundary (`tollgate periods close`, rater.periods), `reset_for_next_period` sets the
tier the customer enters the next period with: the tier the closed period's spend reached, never
lower than the tier the new period's own spend has already reached. So a customer who reached
`scale` last period keeps it this period; one whose carried `scale` was not earned again drops
back. "The spend a period reached" is the highest tier whose threshold its usage spend met: the
sum of its usage events (late ones included), or a promotion recorded in it, whichever is higher
(a volume-tier credit after a promotion does not undo having reached it). The close's own charges
(recurring fees, commit true-up) do not count: they are not usage and were never compared.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tollgate.keys import CustomerKeys
from tollgate.periods import next_period, period_of
from tollgate.tiers import tier_index, tier_reached

if TYPE_CHECKING:
    from rater.settlement import SettleItem, SettleResult
    from tollgate.plans import Plan

_INSERT = """
INSERT INTO tier_transitions (customer_id, period, old_tier, new_tier, event_id, spend_micros)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id) DO NOTHING
"""

# Only upwards, by the order of the plan's tiers: two promotions recorded out of order (or a
# replay of an old one) never take customers.tier back down within the period. A promotion of a
# period the customer has already left (a later period's tier was set at its start by a close)
# is only audited: it must not undo that reset.
_PROMOTE = """
UPDATE customers c SET tier = $2
FROM plans p
WHERE c.id = $1 AND p.id = c.plan_id AND c.tier <> $2
  AND coalesce((SELECT e.o FROM jsonb_array_elements(p.document->'tiers') WITH ORDINALITY AS e(t, o)
                WHERE e.t->>'name' = $2), 0)
    > coalesce((SELECT e.o FROM jsonb_array_elements(p.document->'tiers') WITH ORDINALITY AS e(t, o)
                WHERE e.t->>'name' = c.tier), 0)
  AND NOT EXISTS (SELECT 1 FROM tier_transitions r
                  WHERE r.customer_id = c.id AND r.reason = 'period_reset' AND r.period > $3)
"""


async def record_promotions(conn, items: Sequence[SettleItem], results: Sequence[SettleResult]) -> None:
    """Write a tier_transitions row per promotion (idempotent by event id) and raise customers.tier.

    A replay still to record (settle.lua's outbox kept its result) carries the promotion of its
    first run, so calling this again after a crash between settle and here still records it, once.
    """
    rows = [(i.customer_id, i.period, r.promoted_from, r.promoted_to, i.event_id, r.spend_after_micros)
            for i, r in zip(items, results, strict=True) if r.promoted_to and r.to_record]
    if not rows:
        return
    async with conn.transaction():
        await conn.executemany(_INSERT, rows)
        await conn.executemany(_PROMOTE, [(r[0], r[3], r[1]) for r in rows])


# ----------------------------------------------------------------------------- period boundary


async def reached_in(conn, plan: Plan, customer_id: str, periods: Sequence[str]) -> dict[str, tuple[int, int]]:
    """period -> (index of the highest tier reached in it, its usage spend in micros: its usage
    events and the rollover credit that repriced them, rater.rollovers)."""
    spend = {r[0]: r[1] for r in await conn.fetch(
        "SELECT period, sum(spend_micros)::int8 FROM processed_events"
        " WHERE customer_id = $1 AND period = ANY($2::text[]) AND kind IN ('usage', 'rollover') GROUP BY period",
        customer_id, list(periods))}
    out = {p: (tier_reached(plan, spend.get(p, 0)), spend.get(p, 0)) for p in periods}
    for p, tier in await conn.fetch(
        "SELECT period, new_tier FROM tier_transitions WHERE customer_id = $1 AND period = ANY($2::text[])"
        " AND reason = 'promotion'", customer_id, list(periods)):
        out[p] = (max(out[p][0], tier_index(plan, tier)), out[p][1])
    return out


# Only a projected customer is touched: an HSET on a missing cfg would create a partial one, which
# check.lua would take for a provisioned customer. Returns the tier it replaced (nil: none).
_SET_TIER = """
local old = redis.call('HGET', KEYS[1], 'tier')
if not old then return false end
redis.call('HSET', KEYS[1], 'tier', ARGV[1])
return old
"""


async def reset_for_next_period(conn, redis, customer_id: str, plan: Plan, closed: str, now: float) -> dict:
    """Set the tier `customer_id` enters the period after `closed` with (the module's rule).

    Writes customers.tier and a tier_transitions row (reason 'period_reset', period = the new
    period) in one transaction, then cfg `tier` in Redis. Idempotent: the row is written once; a
    re-run (e.g. after a crash before the Redis write) sets the tier again, never below what the
    reset and the promotions since have set. Nothing happens unless the period after `closed` is
    the customer's current one: a close that comes a period late must not overwrite the tier of
    the period after (that period's own close sets it). The caller holds the customer's lock group,
    so no settlement of the customer's events (and no promotion) runs meanwhile.
    Returns {"tier": the tier set or None, "tier_before": the live tier it replaced}.
    """
    new = next_period(closed)
    if new != period_of(now, plan.billing_anchor_day):
        return {"tier": None, "tier_before": None}
    names = [t.name for t in plan.tiers]
    reached = await reached_in(conn, plan, customer_id, [closed, new])
    target = max(reached[closed][0], reached[new][0])
    cfg = CustomerKeys(customer_id).cfg
    live = await redis.hget(cfg, "tier")
    live = live.decode() if isinstance(live, bytes) else live
    async with conn.transaction():
        recorded = await conn.fetchval("SELECT tier FROM customers WHERE id = $1 FOR UPDATE", customer_id)
        done = await conn.fetchval(
            "SELECT 1 FROM tier_transitions WHERE customer_id = $1 AND period = $2 AND reason = 'period_reset'",
            customer_id, new)
        if done:
            target = max(target, tier_index(plan, recorded))
        else:
            await conn.execute(
                """INSERT INTO tier_transitions (customer_id, period, old_tier, new_tier, event_id, spend_micros, reason)
                   VALUES ($1, $2, $3, $4, NULL, $5, 'period_reset')
                   ON CONFLICT (customer_id, period) WHERE reason = 'period_reset' DO NOTHING""",
                customer_id, new, live or recorded, names[target], reached[closed][1])
        if recorded != names[target]:
            await conn.execute("UPDATE customers SET tier = $2 WHERE id = $1", customer_id, names[target])
    await redis.eval(_SET_TIER, 1, cfg, names[target])
    return {"tier": names[target], "tier_before": live or recorded}
