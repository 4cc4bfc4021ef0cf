"""Margin Guard for operators: a customer's rules (its own list, or its plan's) and its trips,
listed and reset. Used by the admin API (control.http.margin_guard) and the CLI
(control.margin_guard.commands). Rules and trips: tollgate.margin_guard, tollgate.guard_trips."""
from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from control.errors import InvalidInput
from control.fields import iso
from control.lookup import known_id, require_customer, require_plan
from tollgate import guard_trips
from tollgate.margin_guard import GuardRuleError, check_outcomes, parse_rules
from tollgate.plans import Plan

MAX_TRIPS = 200


async def get(db: asyncpg.Pool, customer_id: str, *, active_only: bool = False) -> dict:
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        own = await conn.fetchval("SELECT rules FROM margin_guard_settings WHERE customer_id = $1", customer_id)
        trips = await conn.fetch(
            "SELECT * FROM margin_guard_trips WHERE customer_id = $1 AND (NOT $2 OR reset_at IS NULL)"
            " ORDER BY tripped_at DESC LIMIT $3", customer_id, active_only, MAX_TRIPS)
    return _view(customer_id, plan, orjson.loads(own) if own else None, trips)


async def set_rules(db: asyncpg.Pool, customer_id: str, rules: Any) -> dict:
    """Replace the customer's rules (validated against its plan's outcomes); None: the plan's again."""
    async with db.acquire() as conn, conn.transaction():
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        if rules is None:
            await conn.execute("DELETE FROM margin_guard_settings WHERE customer_id = $1", customer_id)
        else:
            try:
                check_outcomes(parse_rules(rules, "rules"), set(plan.outcome_prices), "rules")
            except GuardRuleError as e:
                raise InvalidInput(e.field, e.message) from None
            await conn.execute(
                "INSERT INTO margin_guard_settings (customer_id, rules) VALUES ($1, $2::jsonb)"
                " ON CONFLICT (customer_id) DO UPDATE SET rules = excluded.rules, updated_at = now()",
                customer_id, orjson.dumps(rules).decode())
    return await get(db, customer_id)


async def reset(db: asyncpg.Pool, redis, customer_id: str, *, trip_id: Any = None, subject: Any = None,
                by: str) -> dict:
    """Reset the customer's active trips: one (trip_id), all of a subject, or all of them."""
    if trip_id is not None and not (isinstance(trip_id, str) and trip_id.startswith("mgt_") and known_id(trip_id)):
        raise InvalidInput("trip_id", "must be a trip id (mgt_...)")
    if subject is not None and not _subject_ok(subject):
        raise InvalidInput("subject", "must be customer, or team:<id>, app:<id>, key:<id> or session:<id>")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        done = await guard_trips.reset(conn, redis, customer_id, trip_id=trip_id, subject=subject, by=by)
    return {"customer_id": customer_id, "reset": [_trip(r) for r in done]}


def _subject_ok(s: Any) -> bool:
    if s == "customer":
        return True
    if not isinstance(s, str) or ":" not in s:
        return False
    level, _, ident = s.partition(":")
    return level in ("team", "app", "key", "session") and known_id(ident)


def _view(customer_id: str, plan: Plan, own: list | None, trips: list) -> dict:
    try:
        effective = parse_rules(own) if own is not None else plan.margin_guard
    except GuardRuleError:  # rules stored under an earlier plan that no longer fit: the plan's
        effective = plan.margin_guard
    return {"customer_id": customer_id, "plan_id": plan.id, "source": "customer" if own is not None else "plan",
            "rules": [r.to_json() for r in effective], "plan_rules": [r.to_json() for r in plan.margin_guard],
            "trips": [_trip(t) for t in trips]}


def _trip(r) -> dict:
    d = dict(r)
    out = {k: d[k] for k in ("id", "rule_id", "subject", "action") if k in d}
    for k in ("period",):
        if k in d:
            out[k] = d[k]
    if "detail" in d:
        out["detail"] = orjson.loads(d["detail"]) if isinstance(d["detail"], (str, bytes)) else d["detail"]
    for k in ("tripped_at", "reset_at"):
        if k in d:
            out[k] = iso(d[k])
    out["reset_by"] = d.get("reset_by")
    out["active"] = d.get("reset_at") is None
    return out
