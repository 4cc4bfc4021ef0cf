"""The billing hierarchy: customer -> team -> app or agent -> API key (migration 0013).

Teams and apps (an app's `kind` says app or agent) are created under a customer; a key names its
app when it is created, and its path never changes. Every level may have limits
(tollgate.limits), projected into the customer's `limits` hash in Redis before the transaction
commits, as customers and keys are (control.projection.writes): check.lua reads them on every
check, so a change applies to the next request. `tree` shows the whole hierarchy with each
level's limits, its spend of the current billing period (from PostgreSQL) and its open holds
counted in Redis (in flight).
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from control.errors import Conflict, InvalidInput, NotFound
from control.fields import choice, ident, iso, text
from control.lookup import known_id, require_customer, require_plan
from control.projection.writes import hold_off_rebuild, project_limits
from tollgate import limits as lim
from tollgate.keys import CustomerKeys
from tollgate.money import format_micros
from tollgate.periods import period_of

KINDS = ("app", "agent")
TEAM_FIELDS = ("name", "limits")
APP_FIELDS = ("name", "limits")


def valid_limits(value: Any, field: str = "limits", *, customer: bool = False) -> dict:
    try:
        return lim.parse_limits(value, field, allow_spend_cap=not customer)
    except lim.LimitsError as e:
        raise InvalidInput(e.field, e.message) from None


def _changes(changes: dict, allowed: tuple[str, ...]) -> dict:
    for name in changes:
        if name not in allowed:
            raise InvalidInput(name, f"unknown field; expected {', '.join(allowed)}")
    if not changes:
        raise InvalidInput("body", f"nothing to change: give one of {', '.join(allowed)}")
    out: dict[str, Any] = {}
    if "name" in changes:
        out["name"] = text(changes["name"], "name")
    if "limits" in changes:
        out["limits"] = valid_limits(changes["limits"])
    return out


async def _open_customer(conn, customer_id: str) -> asyncpg.Record:
    customer = await require_customer(conn, customer_id)
    if customer["status"] == "archived":
        raise Conflict("customer_id", f"customer {customer_id!r} is archived")
    return customer


# ------------------------------------------------------------------------------------ teams


async def create_team(db: asyncpg.Pool, redis: Redis, customer_id: str, *, name: object, team_id: object = None,
                      limits: object = None) -> dict:
    tid = f"team_{secrets.token_hex(6)}" if team_id is None else ident(team_id, "id")
    name = text(name, "name")
    parsed = valid_limits(limits)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        await _open_customer(conn, customer_id)
        try:
            row = await conn.fetchrow(
                "INSERT INTO teams (id, customer_id, name, limits) VALUES ($1, $2, $3, $4::jsonb) RETURNING *",
                tid, customer_id, name, orjson.dumps(parsed).decode())
        except asyncpg.UniqueViolationError:
            raise Conflict("id", f"team {tid!r} already exists") from None
        await project_limits(redis, customer_id, lim.level_field("team", tid), parsed)
    return team_view(row)


async def list_teams(db: asyncpg.Pool, customer_id: str) -> list[dict]:
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch("SELECT * FROM teams WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
    return [team_view(r) for r in rows]


async def update_team(db: asyncpg.Pool, redis: Redis, team_id: str, changes: dict) -> dict:
    return team_view(await _update_level(db, redis, "team", team_id, _changes(changes, TEAM_FIELDS)))


# ------------------------------------------------------------------------------------- apps


async def create_app(db: asyncpg.Pool, redis: Redis, customer_id: str, *, team_id: object, name: object,
                     kind: object = None, app_id: object = None, limits: object = None) -> dict:
    """An app or an agent (`kind`) under one of the customer's teams."""
    kind = "app" if kind is None else choice(kind, KINDS, "kind")
    aid = f"{kind}_{secrets.token_hex(6)}" if app_id is None else ident(app_id, "id")
    team_id = ident(team_id, "team_id")
    name = text(name, "name")
    parsed = valid_limits(limits)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)
        await _open_customer(conn, customer_id)
        team = await conn.fetchrow("SELECT customer_id FROM teams WHERE id = $1 FOR SHARE", team_id)
        if team is None or team["customer_id"] != customer_id:  # another customer's team is not there for this one
            raise InvalidInput("team_id", f"customer {customer_id!r} has no team {team_id!r}")
        try:
            row = await conn.fetchrow(
                """INSERT INTO apps (id, customer_id, team_id, kind, name, limits)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *""",
                aid, customer_id, team_id, kind, name, orjson.dumps(parsed).decode())
        except asyncpg.UniqueViolationError:
            raise Conflict("id", f"app {aid!r} already exists") from None
        await project_limits(redis, customer_id, lim.level_field("app", aid), parsed)
    return app_view(row)


async def list_apps(db: asyncpg.Pool, customer_id: str, team_id: str | None = None) -> list[dict]:
    team_id = None if team_id is None else ident(team_id, "team_id")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT * FROM apps WHERE customer_id = $1 AND ($2::text IS NULL OR team_id = $2) ORDER BY created_at, id",
            customer_id, team_id)
    return [app_view(r) for r in rows]


async def update_app(db: asyncpg.Pool, redis: Redis, app_id: str, changes: dict) -> dict:
    return app_view(await _update_level(db, redis, "app", app_id, _changes(changes, APP_FIELDS)))


async def _update_level(db: asyncpg.Pool, redis: Redis, level: str, row_id: str, cols: dict) -> asyncpg.Record:
    """Change a team's or an app's row (`level` team | app) and project its new limits."""
    if not known_id(row_id):
        raise NotFound(f"{level}_id", f"no {level} {row_id!r}")
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)
        row = await _update(conn, f"{level}s", row_id, cols)
        if row is None:
            raise NotFound(f"{level}_id", f"no {level} {row_id!r}")
        if "limits" in cols:
            await project_limits(redis, row["customer_id"], lim.level_field(level, row_id), cols["limits"])
    return row


async def require_app(conn, customer_id: str, app_id: object, field: str = "app_id") -> asyncpg.Record:
    """The customer's app (locked FOR SHARE while a key is created under it), else 422 naming the field."""
    app_id = ident(app_id, field)
    row = await conn.fetchrow("SELECT * FROM apps WHERE id = $1 FOR SHARE", app_id)
    if row is None or row["customer_id"] != customer_id:
        raise InvalidInput(field, f"customer {customer_id!r} has no app or agent {app_id!r}")
    return row


# ----------------------------------------------------------------------------- the customer


async def set_customer_limits(db: asyncpg.Pool, redis: Redis, customer_id: str, limits: object) -> dict:
    """Customer-level rate limits and max_in_flight (its spend cap stays `spend_cap`); replaces them all."""
    parsed = valid_limits(limits, customer=True)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)
        await require_customer(conn, customer_id)
        await conn.execute("UPDATE customers SET limits = $2::jsonb WHERE id = $1", customer_id,
                           orjson.dumps(parsed).decode())
        await project_limits(redis, customer_id, "customer", parsed)
    return {"customer_id": customer_id, "limits": parsed}


async def _update(conn, table: str, row_id: str, cols: dict) -> asyncpg.Record | None:
    sets, args = [], [row_id]
    for name, value in cols.items():
        args.append(orjson.dumps(value).decode() if name == "limits" else value)
        sets.append(f"{name} = ${len(args)}" + ("::jsonb" if name == "limits" else ""))
    return await conn.fetchrow(f"UPDATE {table} SET {', '.join(sets)} WHERE id = $1 RETURNING *", *args)


# ------------------------------------------------------------------------------------- tree


async def tree(db: asyncpg.Pool, redis: Redis, customer_id: str, *, now: float | None = None) -> dict:
    """teams > apps/agents > keys (keys without an app under the customer), each level with its
    limits, its spend of the current billing period and its open holds counted (`in_flight`,
    only for levels that count them: a max_in_flight or a spend cap)."""
    async with db.acquire() as conn:
        customer = await require_customer(conn, customer_id)
        plan = await require_plan(conn, customer["plan_id"])
        period = period_of(time.time() if now is None else now, plan.billing_anchor_day)
        teams = await conn.fetch("SELECT * FROM teams WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
        apps = await conn.fetch("SELECT * FROM apps WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
        keys = await conn.fetch("SELECT * FROM api_keys WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
        spent = {r["key_id"]: r["s"] for r in await conn.fetch(
            "SELECT coalesce(key_id, '') AS key_id, sum(spend_micros)::bigint AS s FROM processed_events"
            " WHERE customer_id = $1 AND period = $2 GROUP BY 1", customer_id, period)}
    raw = await redis.hgetall(CustomerKeys(customer_id).inflight)
    inflight = {_s(k): int(v) for k, v in raw.items()}

    def node(level: str, base: dict, own: int) -> dict:
        count = inflight.get(level)
        return {**base, "spend": format_micros(own), "in_flight": count}

    key_nodes: dict[str | None, list[dict]] = {}
    app_spend: dict[str, int] = {}
    for k in keys:
        s = spent.get(k["id"], 0)
        key_nodes.setdefault(k["app_id"], []).append(node(lim.level_field("key", k["id"]), key_view(k), s))
        if k["app_id"]:
            app_spend[k["app_id"]] = app_spend.get(k["app_id"], 0) + s
    app_nodes: dict[str, list[dict]] = {}
    team_spend: dict[str, int] = {}
    for a in apps:
        s = app_spend.get(a["id"], 0)
        n = node(lim.level_field("app", a["id"]), app_view(a), s)
        n["keys"] = key_nodes.get(a["id"], [])
        app_nodes.setdefault(a["team_id"], []).append(n)
        team_spend[a["team_id"]] = team_spend.get(a["team_id"], 0) + s
    team_nodes = []
    for t in teams:
        n = node(lim.level_field("team", t["id"]), team_view(t), team_spend.get(t["id"], 0))
        n["apps"] = app_nodes.get(t["id"], [])
        team_nodes.append(n)
    tier = plan.tier(customer["tier"])  # the customer's cap at its tier, as check.lua has it (cfg cap.<tier>)
    _, _, cap = plan.limits_for_tier(tier)
    if customer["spend_cap_micros"] is not None:
        cap = int(customer["spend_cap_micros"] * tier.multiplier)
    cap = None if cap < 0 else cap
    return {
        "customer_id": customer_id, "period": period, "limits": lim.loads(customer["limits"]),
        "spend_cap": None if cap is None else format_micros(cap),
        "spend": format_micros(sum(spent.values())), "in_flight": inflight.get("customer"),
        "teams": team_nodes, "keys": key_nodes.get(None, []),
    }


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def team_view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "customer_id": row["customer_id"], "name": row["name"],
            "limits": lim.loads(row["limits"]), "created_at": iso(row["created_at"])}


def app_view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "customer_id": row["customer_id"], "team_id": row["team_id"], "kind": row["kind"],
            "name": row["name"], "limits": lim.loads(row["limits"]), "created_at": iso(row["created_at"])}


def key_view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "prefix": row["prefix"], "status": row["status"], "app_id": row["app_id"],
            "limits": lim.loads(row["limits"])}
