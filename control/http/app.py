"""The admin HTTP API: the control-plane services over HTTP, guarded by a bearer token.

Every answer is JSON; errors are `{"error": "...", "field": "..."}` with 400 (malformed body),
401 (token), 404 (unknown id), 409 (conflict), 413 (body over 1 MiB), 415 (content type),
422 (validation), 503 (admin disabled or a backend unreachable).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import redis.exceptions
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from control import api_keys, customers, plans, wallets
from control.http import lifecycle as lifecycle_http
from tollgate.backends import Backends
from control.errors import ControlError, InvalidInput
from tollgate.config import Settings
from tollgate.config import settings as env_settings
from tollgate.openapi import openapi_route

log = logging.getLogger("tollgate.admin")

MAX_BODY = 1 << 20
JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
DISABLED = "admin API disabled: set TOLLGATE_ADMIN_TOKEN"
NOT_MIGRATED = "the database has no tollgate schema: run `tollgate db migrate`"
# A backend that does not answer is our problem, not the caller's: 503, not 500.
UNAVAILABLE = (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)

Handler = Callable[[Request, asyncpg.Pool, Redis], Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


def error_response(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return json_response(body, status, headers)


# --------------------------------------------------------------------------- request bodies


async def read_body(request: Request, types: tuple[str, ...]) -> tuple[str, bytes]:
    """(content type, body) after the 415 and 413 checks; the body is read at most 1 MiB + 1 chunk."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in types:
        raise ApiError(415, f"Content-Type must be {' or '.join(types)}", "content-type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"body over {MAX_BODY} bytes", "body")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, f"body over {MAX_BODY} bytes", "body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before the body was read", "body") from None
    return ctype, b"".join(chunks)


async def json_object(request: Request, allowed: tuple[str, ...]) -> dict:
    _, raw = await read_body(request, JSON_TYPES)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e}", "body") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    for name in doc:
        if name not in allowed:
            raise InvalidInput(name, f"unknown field; expected {', '.join(allowed)}")
    return doc


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidInput(name, "must be a whole number")
    return int(raw)


# --------------------------------------------------------------------------- handlers


async def apply_plan(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
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
    result = await plans.apply_plan(db, redis, doc)
    return (201 if result["changed"] and result["version"] == 1 else 200), result


async def list_plans(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"plans": await plans.list_plans(db)}


async def get_plan(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await plans.get_plan(db, request.path_params["id"])


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
    return 201, await api_keys.create_api_key(db, redis, request.path_params["id"])


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


# --------------------------------------------------------------------------- the app


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken says nothing about how much of the token matched
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _guarded(handler: Handler, token: str, backends: Backends) -> Callable[[Request], Awaitable[Response]]:
    # A customer-scoped handler (control.http.read) authenticates the customer's own API key itself.
    scoped = getattr(handler, "customer_scoped", False)

    async def endpoint(request: Request) -> Response:
        if not token and not scoped:
            return error_response(503, DISABLED)
        if not scoped and not _authorized(request, token):
            return error_response(401, "missing or wrong admin token", "authorization",
                                  {"WWW-Authenticate": 'Bearer realm="tollgate-admin"'})
        try:
            db, redis = await backends.get()
            result = await handler(request, db, redis)
        except ApiError as e:
            return error_response(e.status, e.message, e.field)
        except ControlError as e:
            return json_response(e.to_json(), e.status)
        except asyncpg.DataError as e:  # a value PostgreSQL refuses that validation let through
            return error_response(400, f"invalid value: {e}")
        except asyncpg.UndefinedTableError:
            return error_response(503, NOT_MIGRATED)
        except UNAVAILABLE as e:
            log.warning("admin %s %s: backend unavailable: %r", request.method, request.url.path, e)
            return error_response(503, f"backend unavailable: {type(e).__name__}")
        if isinstance(result, Response):  # a handler that sets headers (ETag)
            return result
        status, data = result if isinstance(result, tuple) else (200, result)
        return json_response(data, status)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error")


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/admin/plans", apply_plan),
    ("GET", "/admin/plans", list_plans),
    ("GET", "/admin/plans/{id}", get_plan),
    ("POST", "/admin/customers", create_customer),
    ("GET", "/admin/customers", list_customers),
    ("GET", "/admin/customers/{id}", get_customer),
    ("POST", "/admin/customers/{id}/keys", create_key),
    ("GET", "/admin/customers/{id}/keys", list_keys),
    ("POST", "/admin/keys/{id}/revoke", revoke_key),
    ("POST", "/admin/customers/{id}/wallet/topups", topup),
    ("GET", "/admin/customers/{id}/wallet", show_wallet),
    *lifecycle_http.ROUTES,
]
ROUTES += __import__("control.http.alerts", fromlist=["ROUTES"]).ROUTES  # after the helpers it imports
ROUTES += __import__("control.http.credits", fromlist=["ROUTES"]).ROUTES  # after the helpers it imports


# Background work run beside the API for the app's life (control.service): called with the
# settings and an event set at shutdown, it returns when the event is set.
Worker = Callable[[Settings, asyncio.Event], Awaitable[None]]


def create_app(settings: Settings | None = None, *, db: asyncpg.Pool | None = None,
               redis: Redis | None = None, workers: Sequence[Worker] = ()) -> Starlette:
    """`db`/`redis` may be handed in (tests, an embedding process); otherwise they are opened
    from the settings on first use and closed at shutdown. `workers` run while the app's lifespan
    does (the served process passes control.service.WORKERS; tests embedding the app pass none)."""
    settings = settings or env_settings()
    backends = Backends(settings, db=db, redis=redis)
    token = settings.admin_token

    @asynccontextmanager
    async def lifespan(app: Starlette):
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w(settings, stop)) for w in workers]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await backends.close()

    from control.http.openapi import SPEC  # noqa: PLC0415  (here: it reads this module's constants)
    from control.http import read  # noqa: PLC0415  (here: its handlers use this module's helpers)

    app = Starlette(
        routes=[Route(path, _guarded(h, token, backends), methods=[m]) for m, path, h in ROUTES + read.ROUTES]
        + [openapi_route(SPEC)],
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.backends = backends
    return app
