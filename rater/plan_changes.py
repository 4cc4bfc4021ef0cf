"""What the rater does with a customer's lifecycle (control.accounts.lifecycle): the plan an event is
priced with, and the pending plan change the period close makes the customer's plan.

- Negotiated prices: a customer's effective plan is its plan with its prices on top
  (tollgate.rating.negotiated). One Plan object per (plan id, version, prices), shared by every
  customer with the same: the engine's per-plan cache (plan_pricing) stays hit.
- A plan change at the period boundary is exact by the event's period, not by when the close
  runs: a customer with a pending change carries the Customer of its next plan, and every usage
  event of that period or later is priced with it (switch_pending).
- The close of the last period of the old plan applies the change (apply_pending): customers
  row, cfg in Redis (limits, tiers, caps of the new plan) and the API key records' plan.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from tollgate.cost_catalogs import catalog_from_document, with_catalog
from tollgate.customer_cfg import customer_config, repoint_keys, write_customer_config
from tollgate.periods import next_period
from tollgate.plans import Plan, plan_from_row
from tollgate.rating.negotiated import effective_plan

if TYPE_CHECKING:
    from rater.pipeline import Event

MAX_PLANS = 10_000  # effective plans kept (distinct plan version x negotiated prices)


class Plans:
    """Plan objects by (plan id, version, its cost catalog's version, negotiated prices as stored)."""

    def __init__(self) -> None:
        self._plans: dict[tuple, Plan] = {}

    def get(self, plan_id: str, version: int, document, prices, catalog: tuple = (None, None)) -> Plan:
        """catalog: (version, document) of the cost catalog the plan names, (None, None) if none
        (or none stored: the plan is priced with its own costs only)."""
        key = (plan_id, version, catalog[0], prices if prices and prices != "[]" else None)  # jsonb arrives as text
        plan = self._plans.get(key)
        if plan is None:
            base = self._plans.get(key[:3] + (None,))
            if base is None:
                base = plan_from_row({"document": document})
                if catalog[1] is not None:
                    base = with_catalog(base, catalog_from_document(catalog[1]))
                self._plans[key[:3] + (None,)] = base
            plan = base if key[3] is None else effective_plan(base, prices)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan


def switch_pending(events: Sequence[Event]) -> None:
    """Usage events of the period a pending plan change starts (or later) are priced with the
    new plan: their customer becomes the one the Directory built for it."""
    for e in events:
        c = e.customer
        if c is not None and c.next is not None and e.kind == "usage" and e.period >= c.next[0]:
            e.customer = c.next[1]


async def apply_pending(conn, redis, customer_id: str, closed: str) -> dict:
    """After the close of `closed`: a change pending from the period after it (or earlier)
    becomes the customer's plan. Idempotent (nothing pending: nothing done). Runs under the
    customer's lock group, which a Redis rebuild also waits for."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """SELECT c.*, p.document FROM customers c JOIN plans p ON p.id = c.pending_plan_id
               WHERE c.id = $1 AND c.pending_from_period <= $2 FOR UPDATE OF c""", customer_id, next_period(closed))
        if row is None:
            return {}
        plan = plan_from_row(row)
        tier = plan.tier(row["tier"]).name  # the tier reset's, if the new plan has it; else its first
        await conn.execute(
            """UPDATE customers SET plan_id = pending_plan_id, tier = $2, pending_plan_id = NULL,
                   pending_from_period = NULL, version = version + 1, updated_at = now() WHERE id = $1""",
            customer_id, tier)
        await conn.execute(
            """INSERT INTO customer_audit (customer_id, actor, action, version, period, before, after)
               VALUES ($1, 'rater:period_close', 'plan_change_applied', $2, $3, $4::jsonb, $5::jsonb)""",
            customer_id, row["version"] + 1, row["pending_from_period"],
            orjson.dumps({"plan_id": row["plan_id"]}).decode(),
            orjson.dumps({"plan_id": plan.id, "from_period": row["pending_from_period"]}).decode())
        await write_customer_config(redis, customer_id, customer_config(
            plan, row["billing_mode"], tier, row["spend_cap_micros"], row["status"]))
        hashes = [r["key_hash"] for r in await conn.fetch(
            "SELECT key_hash FROM api_keys WHERE customer_id = $1 AND status = 'active'", customer_id)]
        await repoint_keys(redis, hashes, plan.id)
    return {"plan_changed_to": plan.id}


async def repriced_in(conn, customer_id: str, period: str) -> bool:
    """Whether prices changed within `period` (a plan change now, negotiated prices): the
    customer_audit rows control.accounts.lifecycle writes say so."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM customer_audit WHERE customer_id = $1 AND period = $2 AND repriced)",
        customer_id, period))
