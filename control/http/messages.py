"""What every route module of the admin API shares: reading a request (body bounds, content
types, a JSON object's allowed fields, integer query parameters) and writing the JSON answer or
error (`{"error", "field"}`). Route modules import these; control.http.app assembles the routes."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from control.accounts.audit import token_actor
from control.errors import InvalidInput

MAX_BODY = 1 << 20
JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

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


def actor(request: Request) -> str:
    """Who made an admin request, for audits and resets: the admin token's fingerprint (only
    reached with the right token: control.http.app checks it first)."""
    return token_actor(request.headers.get("authorization", "").partition(" ")[2].strip())


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidInput(name, "must be a whole number")
    return int(raw)
