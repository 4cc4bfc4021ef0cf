"""Agent sessions (control.read.sessions): a customer's sessions, and one with its events and
ledger lines; for the admin, and customer-scoped under /v1/customer/ (its own API key)."""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.http.read import _customer_of_key, _customer_scoped, _limit
from control.read import sessions


async def list_sessions(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await _list(request, db, request.path_params["id"])


async def get_session(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await sessions.get_session(db, request.path_params["id"], request.path_params["session_id"])


@_customer_scoped
async def my_sessions(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await _list(request, db, await _customer_of_key(request, db))


@_customer_scoped
async def my_session(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await sessions.get_session(db, await _customer_of_key(request, db), request.path_params["session_id"])


async def _list(request: Request, db: asyncpg.Pool, customer_id: str) -> dict:
    q = request.query_params
    return await sessions.list_sessions(db, customer_id, status=q.get("status"), after=q.get("after"),
                                        limit=_limit(request))


ROUTES = [
    ("GET", "/admin/customers/{id}/sessions", list_sessions),
    ("GET", "/admin/customers/{id}/sessions/{session_id}", get_session),
    ("GET", "/v1/customer/sessions", my_sessions),
    ("GET", "/v1/customer/sessions/{session_id}", my_session),
]
