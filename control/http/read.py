"""The read API: usage, the current period's preview, invoices and their sources, traces, tier
transitions, open holds, dead letters (list and replay), for the admin (bearer admin token), and
the customer-scoped part under /v1/customer/ for a provider's customers themselves.

Customer access: `Authorization: Bearer <the customer's API key>` (an active key of api_keys, by
its sha256; a revoked or unknown key is 401). It reads only that customer's own usage, preview and
invoices, never writes. Handlers marked `customer_scoped` authenticate this way instead of by the
admin token (control.http.app._guarded).
"""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.read import dead_letters, invoices, margin, preview, trace, usage
from control.errors import InvalidInput
from control.http.messages import ApiError, json_object, query_int
from tollgate.bus import BusUnavailable
from tollgate.keys import api_key_hash

MAX_PAGE = 1000
MAX_DECISION_HOURS = 24 * 90  # decision counts are read back at most 90 days


def _limit(request: Request, default: int = 100) -> int:
    n = query_int(request, "limit", default)
    if not 1 <= n <= MAX_PAGE:
        raise InvalidInput("limit", f"must be 1..{MAX_PAGE}")
    return n


def _usage_options(request: Request) -> dict:
    q = request.query_params
    return {"start": usage.parse_time(q.get("from"), "from"), "end": usage.parse_time(q.get("to"), "to"),
            "bucket": q.get("bucket", "day"), "group_by": usage.parse_group_by(q.get("group_by")),
            "metric": q.get("metric") or None}


# --------------------------------------------------------------------------- admin


async def customer_usage(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await usage.customer_usage(db, request.path_params["id"], **_usage_options(request))


async def customer_margin(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    return await margin.customer_margin(db, request.path_params["id"], period=q.get("period"),
                                        by=margin.parse_by(q.get("by")))


async def key_usage(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await usage.key_usage(db, request.path_params["id"], **_usage_options(request))


async def customer_preview(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await preview.preview(db, redis, request.path_params["id"])


async def list_invoices(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    found = await invoices.list_invoices(db, request.path_params["id"], after=request.query_params.get("after"),
                                         limit=_limit(request))
    return {"invoices": found, "next_after": found[-1]["period"] if found else None}


async def get_invoice(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await invoices.get_invoice(db, request.path_params["id"])


def _line_no(request: Request) -> int:
    raw = request.path_params["line_no"]
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput("line_no", "must be a whole number")
    return int(raw)


async def invoice_line_sources(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    return await invoices.line_sources(db, request.path_params["id"], _line_no(request),
                                       after_event=q.get("after_event"), after_line=query_int(request, "after_line", 0)
                                       if "after_line" in q else -1, limit=_limit(request))


async def get_trace(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await trace.trace(db, request.path_params["correlation_id"])


async def tier_transitions(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"tier_transitions": await trace.tier_transitions(db, request.path_params["id"], limit=_limit(request))}


async def decisions(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    hours = query_int(request, "hours", 24)
    if not 1 <= hours <= MAX_DECISION_HOURS:
        raise InvalidInput("hours", f"must be between 1 and {MAX_DECISION_HOURS}")
    return {"hours": hours, "decisions": await trace.decisions(db, request.path_params["id"], hours=hours)}


async def open_holds(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"holds": await trace.open_holds(db, request.path_params["id"], limit=_limit(request))}


async def list_dead_letters(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    found = await dead_letters.list_letters(db, status=q.get("status", "open"), reason=q.get("reason"),
                                            customer_id=q.get("customer_id"), after=query_int(request, "after", 0),
                                            limit=_limit(request))
    return {"dead_letters": found, "next_after": found[-1]["id"] if found else None}


async def replay_dead_letters(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, ("ids",))
    try:
        return await dead_letters.replay(db, request.app.state.backends.settings, body.get("ids"))
    except BusUnavailable as e:
        raise ApiError(503, f"event bus unavailable: {e}") from None


# --------------------------------------------------------------------------- customer-scoped


async def _customer_of_key(request: Request, db: asyncpg.Pool) -> str:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given or len(given) > 200:
        raise ApiError(401, "missing API key: send Authorization: Bearer <API key>", "authorization")
    row = await db.fetchrow("SELECT customer_id, status FROM api_keys WHERE key_hash = $1", api_key_hash(given))
    if row is None or row["status"] != "active":
        raise ApiError(401, "unknown or revoked API key", "authorization")
    return row["customer_id"]


def _customer_scoped(handler):
    handler.customer_scoped = True
    return handler


@_customer_scoped
async def my_usage(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await usage.customer_usage(db, await _customer_of_key(request, db), **_usage_options(request))


@_customer_scoped
async def my_preview(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await preview.preview(db, redis, await _customer_of_key(request, db))


@_customer_scoped
async def my_invoices(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    found = await invoices.list_invoices(db, await _customer_of_key(request, db),
                                         after=request.query_params.get("after"), limit=_limit(request))
    return {"invoices": found, "next_after": found[-1]["period"] if found else None}


@_customer_scoped
async def my_invoice(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await invoices.get_invoice(db, request.path_params["id"], await _customer_of_key(request, db))


ROUTES = [
    ("GET", "/admin/customers/{id}/usage", customer_usage),
    ("GET", "/admin/customers/{id}/margin", customer_margin),
    ("GET", "/admin/keys/{id}/usage", key_usage),
    ("GET", "/admin/customers/{id}/preview", customer_preview),
    ("GET", "/admin/customers/{id}/invoices", list_invoices),
    ("GET", "/admin/invoices/{id}", get_invoice),
    ("GET", "/admin/invoices/{id}/lines/{line_no}/sources", invoice_line_sources),
    ("GET", "/admin/trace/{correlation_id}", get_trace),
    ("GET", "/admin/customers/{id}/tier-transitions", tier_transitions),
    ("GET", "/admin/customers/{id}/holds", open_holds),
    ("GET", "/admin/customers/{id}/decisions", decisions),
    ("GET", "/admin/dead-letters", list_dead_letters),
    ("POST", "/admin/dead-letters/replay", replay_dead_letters),
    ("GET", "/v1/customer/usage", my_usage),
    ("GET", "/v1/customer/preview", my_preview),
    ("GET", "/v1/customer/invoices", my_invoices),
    ("GET", "/v1/customer/invoices/{id}", my_invoice),
]
