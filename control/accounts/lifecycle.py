"""Customer lifecycle: change plan (now or at the next period), billing mode, spend cap,
negotiated prices, name; suspend, reactivate, archive. One transaction per change:

    lock the row -> compare versions -> change -> audit row (control.accounts.audit) -> project to Redis -> commit

Optimistic concurrency: every change names the version it was read at (HTTP: If-Match with the
ETag of GET /admin/customers/{id}, or `version` in the body; CLI: --version). A stale version is
refused (412, field `version`) and nothing changes, so two operators never silently overwrite each
other; a change without one is refused too (428). Each change adds 1 to the version.

What each status means:
- suspended: check.lua DENYs every check with reason `suspended` (cfg `status`); usage that
  still arrives (requests allowed before) is rated as usual. Reactivate makes it active again.
- archived: final. Every API key is revoked (the enforcer answers 401), the customer leaves the
  default listings, and no change is accepted any more; its in-flight usage is still rated and
  its last period closed like any other, so nothing it used goes unbilled.

Plan changes: `now` projects the new plan's limits, tiers and caps at once and the rater prices
with it from its next directory refresh (rater.pipeline.Directory, at most its cache TTL: 5 s);
refused if this period's usage has charges the new plan cannot price (the engine would refuse
the period): such a change can only be `period_end`. `period_end` (the default when the current
or the new plan has a minimum commit: a commit is owed per whole period) stores the change as
pending: the rater prices every event of the next period with the new plan, exactly, by the
event's period, and the close of the current period makes it the customer's plan (limits in
Redis switch then). Both plans must share the billing anchor day (periods must not move).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from control.accounts import audit
from control.accounts.customers import effective_tier, get_customer, pending_change, prices_of, project_row
from control.errors import Conflict, ControlError, InvalidInput, NotFound
from control.fields import choice, ident, money_micros, text
from control.lookup import known_id, require_plan
from control.projection.writes import hold_off_rebuild, project_api_key
from tollgate.customer_cfg import repoint_keys
from tollgate.money import format_micros
from tollgate.periods import next_period, period_of
from tollgate.plans import BILLING_MODES, Plan, PlanError
from tollgate.rating.negotiated import effective_plan, parse_prices, unpriced_keys

EFFECTIVE = ("now", "period_end")
UPDATABLE = ("name", "billing_mode", "spend_cap", "prices")


class PreconditionFailed(ControlError):
    """The version named is not the customer's: someone changed it since it was read."""
    status = 412


class PreconditionRequired(ControlError):
    status = 428


def parse_version(value: object, field: str = "version") -> int:
    """A version from the body (an integer) or an If-Match ETag ("3", W/"3", 3)."""
    if isinstance(value, str):
        v = value.strip().removeprefix("W/").strip('"')
        if v.isdigit():
            return int(v)
        raise InvalidInput(field, f"{value!r} is not an ETag of this API (\"<version>\")")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(field, "must be the customer's version, a whole number >= 1")
    return value


def etag(version: int) -> str:
    return f'"{version}"'


def snapshot(row: asyncpg.Record) -> dict:
    """What the audit records before and after a change."""
    cap = row["spend_cap_micros"]
    return {"name": row["name"], "plan_id": row["plan_id"], "billing_mode": row["billing_mode"],
            "spend_cap": None if cap is None else format_micros(cap), "status": row["status"],
            "pending_plan_change": pending_change(row), "prices": prices_of(row), "version": row["version"]}


Change = Callable[[asyncpg.Connection, asyncpg.Record, Plan], Awaitable[tuple[dict[str, Any], bool]]]


async def _change(db: asyncpg.Pool, redis: Redis, customer_id: str, version: object, actor: str, action: str,
                  change: Change, *, extra: dict | None = None) -> dict:
    """The transaction every change runs in; `change` returns (columns to set, repriced)."""
    if version is None:
        raise PreconditionRequired("version", "name the version you read: If-Match: \"<version>\" or `version`")
    version = parse_version(version)
    if not known_id(customer_id):
        raise NotFound("customer_id", f"no customer {customer_id!r}")
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        row = await conn.fetchrow("SELECT * FROM customers WHERE id = $1 FOR UPDATE", customer_id)
        if row is None:
            raise NotFound("customer_id", f"no customer {customer_id!r}")
        if row["version"] != version:
            raise PreconditionFailed("version", f"customer {customer_id!r} is at version {row['version']}, not"
                                     f" {version}: it changed since you read it; read it again")
        if row["status"] == "archived":
            raise Conflict("status", f"customer {customer_id!r} is archived: it takes no change")
        plan = await require_plan(conn, row["plan_id"], lock=True)
        columns, repriced = await change(conn, row, plan)
        names = list(columns)
        sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
        new = await conn.fetchrow(
            f"UPDATE customers SET {sets}{', ' if sets else ''}version = version + 1, updated_at = now()"
            " WHERE id = $1 RETURNING *", customer_id, *columns.values())
        new_plan = plan if new["plan_id"] == plan.id else await require_plan(conn, new["plan_id"], lock=True)
        after = snapshot(new) | (extra or {})
        await audit.record(conn, customer_id, actor, action, new["version"], period_of(time.time(), plan.billing_anchor_day),
                           snapshot(row), after, repriced=repriced)
        # Projected before commit: if Redis is unreachable nothing changes at all.
        await project_row(redis, new, new_plan)
        if new_plan.id != plan.id:
            hashes = [r["key_hash"] for r in await conn.fetch(
                "SELECT key_hash FROM api_keys WHERE customer_id = $1 AND status = 'active'", customer_id)]
            await repoint_keys(redis, hashes, new_plan.id)
    return await get_customer(db, redis, customer_id)


# --------------------------------------------------------------------------- the changes


async def update_customer(db: asyncpg.Pool, redis: Redis, customer_id: str, changes: dict, *, version: object,
                          actor: str) -> dict:
    """name, billing_mode, spend_cap (a decimal string; null: the plan's cap again), prices
    (the whole list of negotiated prices; [] removes them all)."""
    for name in changes:
        if name not in UPDATABLE:
            raise InvalidInput(name, f"unknown field; expected {', '.join(UPDATABLE)} (and version)")
    if not changes:
        raise InvalidInput("body", f"nothing to change: give one of {', '.join(UPDATABLE)}")
    plain: dict[str, Any] = {}  # validated before the version: bad input is 422 whatever the version
    if "name" in changes:
        plain["name"] = text(changes["name"], "name")
    if "billing_mode" in changes:
        plain["billing_mode"] = choice(changes["billing_mode"], BILLING_MODES, "billing_mode")
    if "spend_cap" in changes:
        cap = changes["spend_cap"]
        plain["spend_cap_micros"] = None if cap is None else money_micros(cap, "spend_cap", positive=False)

    async def change(conn: asyncpg.Connection, row: asyncpg.Record, plan: Plan) -> tuple[dict, bool]:
        cols = dict(plain)
        repriced = False
        if "prices" in changes:
            stored = _valid_prices(plan, changes["prices"])
            await _priceable(conn, row, effective_plan(plan, stored), plan, "prices")
            cols["prices"] = orjson.dumps(stored).decode()
            repriced = stored != prices_of(row)
        return cols, repriced

    return await _change(db, redis, customer_id, version, actor, "update", change)


async def change_plan(db: asyncpg.Pool, redis: Redis, customer_id: str, plan_id: object, *, effective: object = None,
                      version: object, actor: str) -> dict:
    """To the current plan: cancels a pending change."""
    plan_id = ident(plan_id, "plan_id")
    if effective is not None:
        effective = choice(effective, EFFECTIVE, "effective")

    async def change(conn: asyncpg.Connection, row: asyncpg.Record, plan: Plan) -> tuple[dict, bool]:
        target = await require_plan(conn, plan_id, lock=True, missing=InvalidInput)
        if target.id == plan.id:
            if row["pending_plan_id"] is None:
                raise Conflict("plan_id", f"customer {customer_id!r} is on plan {plan_id!r} already")
            return {"pending_plan_id": None, "pending_from_period": None}, False
        if target.billing_anchor_day != plan.billing_anchor_day:
            raise InvalidInput("plan_id", f"plan {plan_id!r} starts its periods on day {target.billing_anchor_day},"
                               f" plan {plan.id!r} on day {plan.billing_anchor_day}: a customer's periods cannot move")
        when = effective or ("period_end" if plan.minimum_commit_micros or target.minimum_commit_micros else "now")
        current = period_of(time.time(), plan.billing_anchor_day)
        if when == "period_end":
            return {"pending_plan_id": target.id, "pending_from_period": next_period(current)}, False
        await _priceable(conn, row, effective_plan(target, prices_of(row)), target, "plan_id")
        tier = effective_tier(target, row["tier"])
        return {"plan_id": target.id, "tier": tier, "pending_plan_id": None, "pending_from_period": None}, True

    return await _change(db, redis, customer_id, version, actor, "plan_change", change,
                         extra={"effective": effective} if effective else None)


async def set_status(db: asyncpg.Pool, redis: Redis, customer_id: str, action: str, *, version: object,
                     actor: str) -> dict:
    """action: suspend, reactivate, archive."""
    wanted = {"suspend": "suspended", "reactivate": "active", "archive": "archived"}[action]

    async def change(conn: asyncpg.Connection, row: asyncpg.Record, plan: Plan) -> tuple[dict, bool]:
        if row["status"] == wanted:
            raise Conflict("status", f"customer {customer_id!r} is {wanted} already")
        if action == "archive":  # its keys stop working: the enforcer answers 401 from now on
            for k in await conn.fetch(
                """UPDATE api_keys SET status = 'revoked', revoked_at = now()
                   WHERE customer_id = $1 AND status = 'active' RETURNING id, key_hash""", customer_id):
                await project_api_key(redis, k["key_hash"], k["id"], customer_id, plan.id, "revoked")
        return {"status": wanted}, False

    return await _change(db, redis, customer_id, version, actor, action, change)


# --------------------------------------------------------------------------- helpers


def _valid_prices(plan: Plan, raw: object) -> list:
    """The list as stored: each entry validated against the plan (PlanError -> 422 naming it)."""
    try:
        parse_prices(plan, raw)
    except PlanError as e:
        raise InvalidInput(e.field, e.message) from None
    return [{"charge_id": p["charge_id"], "match": {k: str(v) for k, v in (p.get("match") or {}).items()},
             **{k: v for k, v in p.items() if k not in ("charge_id", "match")}} for p in raw]  # type: ignore[union-attr]


async def _priceable(conn: asyncpg.Connection, row: asyncpg.Record, priced: Plan, plan: Plan, field: str) -> None:
    """Refuse a change that would leave this period's usage under keys the new pricing lacks."""
    period = period_of(time.time(), plan.billing_anchor_day)
    keys = await conn.fetch("SELECT charge_id, dimension_key FROM rating_cumulatives WHERE customer_id = $1"
                            " AND period = $2", row["id"], period)
    bad = unpriced_keys(priced, [(k["charge_id"], k["dimension_key"]) for k in keys])
    if bad:
        shown = ", ".join(f"{c}/{d}" for c, d in bad[:5])
        raise Conflict(field, f"this period's usage has charges the change leaves unpriced ({shown}):"
                       " change it at the period's end (effective: period_end) instead")
