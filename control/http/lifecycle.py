"""The customer lifecycle over HTTP (control.accounts.lifecycle): PATCH a customer, change its plan,
suspend, reactivate, archive, read its audit trail.

Optimistic concurrency: GET /admin/customers/{id} answers `ETag: "<version>"`; every change
names it, as `If-Match: "<version>"` (or `version` in the JSON body), and answers 412 (field
`version`) when the customer changed meanwhile, 428 when no version was given. Each answer
carries the new ETag. The audit names the admin token used by the first 8 hex of its sha256.
"""
from __future__ import annotations

import asyncpg
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from control.accounts import audit, lifecycle
from control.errors import InvalidInput
from control.http.messages import actor


def _version(request: Request, body: dict) -> object:
    """If-Match, else the body's `version`; both must agree when both are given."""
    header = request.headers.get("if-match")
    given = body.pop("version", None)
    if header is None:
        return given
    v = lifecycle.parse_version(header, "if-match")
    if given is not None and lifecycle.parse_version(given) != v:
        raise InvalidInput("version", "If-Match and `version` name different versions")
    return v


async def json_object(request: Request, allowed: tuple[str, ...]) -> dict:
    # here, not at the top: control.http.app imports this module for its ROUTES
    from control.http.messages import json_object  # noqa: PLC0415

    return await json_object(request, allowed)


async def _body(request: Request, allowed: tuple[str, ...]) -> dict:
    """A JSON object, or nothing at all (suspend, reactivate and archive need only If-Match)."""
    if not request.headers.get("content-type") and request.headers.get("content-length", "0") == "0":
        return {}
    return await json_object(request, allowed)


def customer_response(customer: dict) -> Response:
    """The customer, and its version as the ETag the next change names (If-Match)."""
    return Response(orjson.dumps(customer), 200, headers={"ETag": lifecycle.etag(customer["version"])},
                    media_type="application/json")


async def update_customer(request: Request, db: asyncpg.Pool, redis: Redis) -> Response:
    body = await json_object(request, (*lifecycle.UPDATABLE, "version"))
    version = _version(request, body)
    return customer_response(await lifecycle.update_customer(
        db, redis, request.path_params["id"], body, version=version, actor=actor(request)))


async def change_plan(request: Request, db: asyncpg.Pool, redis: Redis) -> Response:
    body = await json_object(request, ("plan_id", "effective", "version"))
    version = _version(request, body)
    return customer_response(await lifecycle.change_plan(
        db, redis, request.path_params["id"], body.get("plan_id"), effective=body.get("effective"),
        version=version, actor=actor(request)))


def _status_change(action: str):
    async def handler(request: Request, db: asyncpg.Pool, redis: Redis) -> Response:
        body = await _body(request, ("version",))
        version = _version(request, body)
        return customer_response(await lifecycle.set_status(
            db, redis, request.path_params["id"], action, version=version, actor=actor(request)))

    handler.__name__ = f"{action}_customer"
    return handler


async def customer_audit(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    from control.http.messages import query_int  # noqa: PLC0415  (see json_object)

    raw = request.query_params.get("before_id")
    if raw is not None and not raw.isdigit():
        raise InvalidInput("before_id", "must be a whole number")
    entries = await audit.list_audit(db, request.path_params["id"], before_id=None if raw is None else int(raw),
                                     limit=query_int(request, "limit", 100))
    return {"entries": entries, "next_before_id": entries[-1]["id"] if entries else None}


ROUTES = [
    ("PATCH", "/admin/customers/{id}", update_customer),
    ("POST", "/admin/customers/{id}/plan-change", change_plan),
    ("POST", "/admin/customers/{id}/suspend", _status_change("suspend")),
    ("POST", "/admin/customers/{id}/reactivate", _status_change("reactivate")),
    ("POST", "/admin/customers/{id}/archive", _status_change("archive")),
    ("GET", "/admin/customers/{id}/audit", customer_audit),
]
