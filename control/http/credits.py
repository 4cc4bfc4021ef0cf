"""The admin API of credits: wallet adjustments, credit grants, auto-recharge settings
(control.credits.adjustments, control.credits.grants, control.credits.auto_recharge). Appended to ROUTES in
control.http.app."""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.credits import adjustments, auto_recharge, grants as credit_grants
from control.http.messages import Handler, json_object


async def adjust(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("amount", "reason", "id", "allow_negative"))
    result = await adjustments.adjust(db, redis, request.path_params["id"], body.get("amount"), body.get("reason"),
                                      adjustment_id=body.get("id"), allow_negative=body.get("allow_negative"))
    return (201 if result["applied"] else 200), result


async def list_adjustments(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"adjustments": await adjustments.list_adjustments(db, request.path_params["id"])}


async def create_grant(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("amount", "kind", "priority", "expires_at", "id", "note"))
    result = await credit_grants.create_grant(
        db, redis, request.path_params["id"], body.get("amount"), kind=body.get("kind"),
        priority=body.get("priority"), expires_at=body.get("expires_at"), grant_id=body.get("id"),
        note=body.get("note"))
    return (201 if result["credited"] else 200), result


async def list_grants(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"credit_grants": await credit_grants.list_grants(db, request.path_params["id"])}


async def put_auto_recharge(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("threshold", "amount", "enabled"))
    return await auto_recharge.put_settings(db, request.path_params["id"], body.get("threshold"),
                                            body.get("amount"), body.get("enabled"))


async def get_auto_recharge(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await auto_recharge.get_settings(db, request.path_params["id"])


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/admin/customers/{id}/wallet/adjustments", adjust),
    ("GET", "/admin/customers/{id}/wallet/adjustments", list_adjustments),
    ("POST", "/admin/customers/{id}/credit-grants", create_grant),
    ("GET", "/admin/customers/{id}/credit-grants", list_grants),
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge", put_auto_recharge),
    ("GET", "/admin/customers/{id}/wallet/auto-recharge", get_auto_recharge),
]
