"""Admin routes of the catalog: plans, cost catalogs, customers, API keys, wallet top-ups (control.accounts)."""
from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from control.accounts import api_keys, cost_catalogs, customers, plans, wallets
from control.errors import InvalidInput
from control.http import lifecycle as lifecycle_http
from control.http.messages import JSON_TYPES, YAML_TYPES, ApiError, Handler, json_object, query_int, read_body

async def _document(request: Request) -> Any:
    """A plan or catalog document from a JSON or YAML body."""
    ctype, raw = await read_body(request, JSON_TYPES + YAML_TYPES)
    if ctype in JSON_TYPES:
        try:
            doc: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"malformed JSON: {e}", "body") from None
    else:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise ApiError(400, "the body is not UTF-8", "body") from None
        try:
            doc = plans.parse_document_text(text)
        except InvalidInput as e:
            raise ApiError(400, str(e), e.field) from None
    return doc


async def apply_plan(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    result = await plans.apply_plan(db, redis, await _document(request))
    return (201 if result["changed"] and result["version"] == 1 else 200), result


async def apply_cost_catalog(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    result = await cost_catalogs.apply_catalog(db, await _document(request))
    return (201 if result["changed"] and result["version"] == 1 else 200), result


async def list_cost_catalogs(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"cost_catalogs": await cost_catalogs.list_catalogs(db)}


async def get_cost_catalog(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await cost_catalogs.get_catalog(db, request.path_params["id"])


async def list_plans(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"plans": await plans.list_plans(db)}


async def get_plan(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await plans.get_plan(db, request.path_params["id"])


async def plan_versions(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"versions": await plans.plan_versions(db, request.path_params["id"])}


async def create_customer(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("id", "name", "plan_id", "billing_mode", "spend_cap"))
    created = await customers.create_customer(
        db, redis, name=body.get("name"), plan_id=body.get("plan_id"), customer_id=body.get("id"),
        billing_mode=body.get("billing_mode"), spend_cap=body.get("spend_cap"),
    )
    return 201, created


async def list_customers(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    found = await customers.list_customers(
        db, plan_id=q.get("plan_id"), after=q.get("after"), limit=query_int(request, "limit", 100),
        status=q.get("status"),
    )
    return {"customers": found, "next_after": found[-1]["id"] if found else None}


async def get_customer(request: Request, db: asyncpg.Pool, redis: Redis) -> Response:
    found = await customers.get_customer(db, redis, request.path_params["id"])
    return lifecycle_http.customer_response(found)  # its ETag: the version a change names (If-Match)


async def create_key(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    # no body (as before the hierarchy), or {app_id, limits}
    body = {} if request.headers.get("content-length", "0") == "0" and not request.headers.get("content-type") \
        else await json_object(request, ("app_id", "limits"))
    return 201, await api_keys.create_api_key(db, redis, request.path_params["id"], app_id=body.get("app_id"),
                                              limits=body.get("limits"))


async def list_keys(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"api_keys": await api_keys.list_api_keys(db, request.path_params["id"])}


async def revoke_key(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await api_keys.revoke_api_key(db, redis, request.path_params["id"])


async def topup(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("amount", "id", "note"))
    result = await wallets.topup(db, redis, request.path_params["id"], body.get("amount"),
                                 topup_id=body.get("id"), note=body.get("note"))
    return (201 if result["credited"] else 200), result


async def show_wallet(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await wallets.show_wallet(db, redis, request.path_params["id"])


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/admin/plans", apply_plan),
    ("GET", "/admin/plans", list_plans),
    ("GET", "/admin/plans/{id}", get_plan),
    ("GET", "/admin/plans/{id}/versions", plan_versions),
    ("POST", "/admin/cost-catalogs", apply_cost_catalog),
    ("GET", "/admin/cost-catalogs", list_cost_catalogs),
    ("GET", "/admin/cost-catalogs/{id}", get_cost_catalog),
    ("POST", "/admin/customers", create_customer),
    ("GET", "/admin/customers", list_customers),
    ("GET", "/admin/customers/{id}", get_customer),
    ("POST", "/admin/customers/{id}/keys", create_key),
    ("GET", "/admin/customers/{id}/keys", list_keys),
    ("POST", "/admin/keys/{id}/revoke", revoke_key),
    ("POST", "/admin/customers/{id}/wallet/topups", topup),
    ("GET", "/admin/customers/{id}/wallet", show_wallet),
]
