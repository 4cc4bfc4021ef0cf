"""Sending JSON straight through ASGI (the endpoints are raw ASGI apps)."""
from __future__ import annotations

from enforcer.validation import BadRequest


async def send_json(send, status: int, body: bytes, headers=()) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(send, e: BadRequest, headers=()) -> None:
    await send_json(send, e.status, e.body(), headers)
