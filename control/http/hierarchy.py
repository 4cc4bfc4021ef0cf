"""Admin routes of the billing hierarchy (control.accounts.hierarchy): teams, apps and agents, a
key's own limits, the customer's limits, and the tree; the tree also customer-scoped under
/v1/customer/ (authenticated by the customer's own API key, as control.http.read)."""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.accounts import api_keys, hierarchy
from control.errors import InvalidInput
from control.http.messages import Handler, json_object
from control.http.read import _customer_of_key, _customer_scoped


async def create_team(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("id", "name", "limits"))
    return 201, await hierarchy.create_team(db, redis, request.path_params["id"], name=body.get("name"),
                                            team_id=body.get("id"), limits=body.get("limits"))


async def list_teams(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"teams": await hierarchy.list_teams(db, request.path_params["id"])}


async def update_team(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, hierarchy.TEAM_FIELDS)
    return await hierarchy.update_team(db, redis, request.path_params["id"], body)


async def create_app(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("id", "team_id", "kind", "name", "limits"))
    return 201, await hierarchy.create_app(db, redis, request.path_params["id"], team_id=body.get("team_id"),
                                           name=body.get("name"), kind=body.get("kind"), app_id=body.get("id"),
                                           limits=body.get("limits"))


async def list_apps(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"apps": await hierarchy.list_apps(db, request.path_params["id"], request.query_params.get("team_id"))}


async def update_app(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, hierarchy.APP_FIELDS)
    return await hierarchy.update_app(db, redis, request.path_params["id"], body)


async def update_key(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("limits",))
    return await api_keys.update_api_key(db, redis, request.path_params["id"], body)


async def put_customer_limits(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("limits",))
    if "limits" not in body:
        raise InvalidInput("limits", "required: the customer's limits ({} for none)")
    return await hierarchy.set_customer_limits(db, redis, request.path_params["id"], body["limits"])


async def customer_tree(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await hierarchy.tree(db, redis, request.path_params["id"])


@_customer_scoped
async def my_tree(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await hierarchy.tree(db, redis, await _customer_of_key(request, db))


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/admin/customers/{id}/teams", create_team),
    ("GET", "/admin/customers/{id}/teams", list_teams),
    ("PATCH", "/admin/teams/{id}", update_team),
    ("POST", "/admin/customers/{id}/apps", create_app),
    ("GET", "/admin/customers/{id}/apps", list_apps),
    ("PATCH", "/admin/apps/{id}", update_app),
    ("PATCH", "/admin/keys/{id}", update_key),
    ("PUT", "/admin/customers/{id}/limits", put_customer_limits),
    ("GET", "/admin/customers/{id}/tree", customer_tree),
    ("GET", "/v1/customer/tree", my_tree),
]
