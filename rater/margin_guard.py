"""The rater's Margin Guard: after each batch, the customers with rules (tollgate.margin_guard) are
judged from what the batch changed, and what trips is recorded and projected
(tollgate.guard_trips), so the next /v1/check of the session, agent or customer is denied.

- `session_cost` rules: the sessions the batch touched (agent sessions, rater.sessions), by their
  running cost: the summed measurements of their events so far at the plan's costs (and its cost
  catalog's). stop `session` trips `session:<id>`; stop `agent` trips the agent of the session's
  key (`app:<id>`), or the key itself (`key:<id>`) when it has no app.
- `period_margin` rules: the customer's period price and cost from the rollups
  (tollgate.margin), at most once per `margin_interval_s` per customer.
- A session closed by the batch (its end, the idle sweeper, the period close) has its session
  trips reset (`reset_by` session_end); trips that stop an agent or a customer wait for an operator.

Latency: the guard field is set right after the batch that pushed the figure over, before the
batch is acknowledged: the next check sees it within the rater's batch time (well under a second
when the rater keeps up). A crash before the field is set redelivers the batch, which proposes the
same trip again: the row is found active and the field is set then (tollgate.guard_trips.record).
Customers whose plan has no rules (and no own rules) cost a dictionary lookup per batch.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import orjson

from tollgate import guard_trips
from tollgate.guard_trips import Trip
from tollgate.margin import margin_figures, margin_rows
from tollgate.margin_guard import GuardRule, GuardRuleError, margin_trips, parse_rules, session_trips
from tollgate.money import format_micros
from tollgate.periods import period_bounds, period_of
from tollgate.rating.pricing.cost import running_cost
from tollgate.rating.pricing.engine import plan_pricing

if TYPE_CHECKING:
    from rater.key_paths import KeyPaths
    from rater.pipeline import Customer

MAX_DONE = 100_000  # trips known recorded and projected, remembered before the memory starts over


class RaterGuard:
    def __init__(self, ttl_s: float = 5.0, margin_interval_s: float = 1.0, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.margin_interval_s = margin_interval_s
        self.clock = clock
        # customer -> (expiry, the plan object, its own rules or None (the plan's), effective rules)
        self._rules: dict[str, tuple[float, object, tuple[GuardRule, ...] | None, tuple[GuardRule, ...]]] = {}
        self._margin_at: dict[str, float] = {}  # customer -> when its period margin was last judged
        self._done: set[tuple[str, str, str, str]] = set()  # (customer, rule, subject, period) handled

    async def rules(self, conn, customers: Iterable[Customer]) -> dict[str, tuple[GuardRule, ...]]:
        """Each customer's effective rules: its own list if it has one, else its plan's (cached ttl_s)."""
        now = self.clock()
        customers = list(customers)
        stale = [c.id for c in customers if (hit := self._rules.get(c.id)) is None or hit[0] <= now]
        own: dict[str, tuple[GuardRule, ...]] = {}
        if stale:
            for cid, doc in await conn.fetch(
                    "SELECT customer_id, rules FROM margin_guard_settings WHERE customer_id = ANY($1::text[])", stale):
                try:
                    own[cid] = parse_rules(orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc)
                except GuardRuleError:  # validated when stored; rules from before a plan change: the plan's
                    pass
        out: dict[str, tuple[GuardRule, ...]] = {}
        for c in customers:
            hit = self._rules.get(c.id)
            if hit is not None and hit[0] > now and hit[1] is c.plan:
                rules = hit[3]
            else:
                mine = own.get(c.id) if c.id in stale else (hit[2] if hit else None)
                rules = mine if mine is not None else c.plan.margin_guard
                self._rules[c.id] = (now + self.ttl_s, c.plan, mine, rules)
            if rules:
                out[c.id] = rules
        return out

    async def after_batch(self, pool, redis, customers: Sequence[Customer], sessions: set[tuple[str, str]],
                          key_paths: KeyPaths, now: float | None = None) -> list[Trip]:
        """Judge the batch's customers and sessions; record and project what trips. Returns the
        trips proposed (new or already active)."""
        if not customers:
            return []
        now = time.time() if now is None else now
        async with pool.acquire() as conn:
            rules = await self.rules(conn, {c.id: c for c in customers}.values())
            if not rules and not sessions:
                return []
            by_id = {c.id: c for c in customers}
            trips, ended = await self._session_trips(conn, rules, by_id, sessions, key_paths)
            trips += await self._margin_trips(conn, rules, by_id, now)
            todo = [t for t in trips if (t.customer_id, t.rule_id, t.subject, t.period) not in self._done]
            if todo:
                async with conn.transaction():
                    _, active = await guard_trips.record(conn, todo)
                await guard_trips.set_fields(redis, active)
                if len(self._done) > MAX_DONE:
                    self._done.clear()
                self._done.update((t.customer_id, t.rule_id, t.subject, t.period) for t in todo)
            if ended:  # the ended sessions' active trips (one indexed query; usually none)
                for cid, subject in await conn.fetch(
                        "SELECT DISTINCT m.customer_id, m.subject FROM margin_guard_trips m"
                        " JOIN unnest($1::text[], $2::text[]) AS u(c, s) ON m.customer_id = u.c AND m.subject = u.s"
                        " WHERE m.reset_at IS NULL", [c for c, _ in ended], [f"session:{s}" for _, s in ended]):
                    await guard_trips.reset(conn, redis, cid, subject=subject, by="session_end")
        return trips

    async def _session_trips(self, conn, rules, customers, sessions, key_paths) -> tuple[list[Trip], list[tuple[str, str]]]:
        """Trips of the touched sessions still open, and the touched sessions that are closed."""
        asked = [(c, s) for c, s in sessions if any(r.when == "session_cost" for r in rules.get(c, ()))]
        if not asked:
            return [], []
        rows = await conn.fetch(
            "SELECT s.customer_id, s.session_id, s.status, s.key_id, s.period, s.dimensions, s.measurements"
            " FROM agent_sessions s JOIN unnest($1::text[], $2::text[]) AS u(c, s)"
            " ON s.customer_id = u.c AND s.session_id = u.s", [c for c, _ in asked], [s for _, s in asked])
        await key_paths.load(conn, [r["key_id"] for r in rows if r["status"] == "open"])
        trips: list[Trip] = []
        ended: list[tuple[str, str]] = []
        for r in rows:
            cid, sid = r["customer_id"], r["session_id"]
            if r["status"] != "open":
                ended.append((cid, sid))
                continue
            customer = customers[cid]
            dims, ms = _json(r["dimensions"]), _json(r["measurements"])
            cost = running_cost(plan_pricing(customer.plan).costs, dims, ms)
            for rule in session_trips(rules[cid], cost, customer.plan.outcome_prices):
                if rule.stop == "session":
                    subject = f"session:{sid}"
                else:
                    app = key_paths.get(r["key_id"]).app_id
                    subject = f"app:{app}" if app else f"key:{r['key_id']}"
                limit = rule.session_limit_micros(customer.plan.outcome_prices)
                trips.append(Trip(cid, rule.id, subject, r["period"], rule.action,
                                  {"session_id": sid, "key_id": r["key_id"], "session_cost": format_micros(cost),
                                   "limit": format_micros(limit or 0)}))
        return trips, ended

    async def _margin_trips(self, conn, rules, customers, now: float) -> list[Trip]:
        mono = self.clock()
        trips: list[Trip] = []
        for cid, rs in rules.items():
            if not any(r.when == "period_margin" for r in rs) or mono - self._margin_at.get(cid, -1e18) < self.margin_interval_s:
                continue
            self._margin_at[cid] = mono
            plan = customers[cid].plan
            period = period_of(now, plan.billing_anchor_day)
            start, end = period_bounds(period, plan.billing_anchor_day)
            (row,) = await margin_rows(conn, cid, start.date(), end.date(), [])
            for rule in margin_trips(rs, row["price"], row["cost"]):
                trips.append(Trip(cid, rule.id, "customer", period, rule.action,
                                  {**margin_figures(row["price"], row["cost"]), "below_percent": str(rule.percent)}))
        return trips


def _json(v):
    return orjson.loads(v) if isinstance(v, (str, bytes)) else (v or {})
