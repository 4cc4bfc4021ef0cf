"""Admin API of Margin Guard: a customer's rules and trips, and the operator's reset
(control.margin_guard.manage does the work)."""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.errors import InvalidInput
from control.http.messages import actor, json_object
from control.margin_guard import manage


async def get_guard(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    raw = request.query_params.get("active", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidInput("active", "must be true or false")
    active = raw in ("true", "1")
    return await manage.get(db, request.path_params["id"], active_only=active)


async def put_rules(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("rules",))
    if not isinstance(body.get("rules"), list):
        raise InvalidInput("rules", "required: a list of rules ([] turns the guard off; DELETE goes back to the plan's)")
    return await manage.set_rules(db, request.path_params["id"], body.get("rules"))


async def delete_rules(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await manage.set_rules(db, request.path_params["id"], None)


async def reset(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("trip_id", "subject"))
    return await manage.reset(db, redis, request.path_params["id"], trip_id=body.get("trip_id"),
                              subject=body.get("subject"), by=actor(request))


ROUTES = [
    ("GET", "/admin/customers/{id}/margin-guard", get_guard),
    ("PUT", "/admin/customers/{id}/margin-guard", put_rules),
    ("DELETE", "/admin/customers/{id}/margin-guard", delete_rules),
    ("POST", "/admin/customers/{id}/margin-guard/reset", reset),
]
