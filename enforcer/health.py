"""/healthz (the process serves), /readyz (Redis answers), /metrics (Prometheus)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from enforcer import metrics
from enforcer.rediswire import Failure, ReplyError

if TYPE_CHECKING:
    from enforcer.app import Enforcer


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(enforcer: Enforcer):
    async def endpoint(request: Request) -> Response:
        # Straight to Redis, past the breaker: readiness must say how Redis is, not how it was.
        reply = await enforcer.wire.call(("PING",), 0.25)
        ok = not isinstance(reply, (Failure, ReplyError))
        body = {"status": "ready" if ok else "redis_unreachable", "breaker_open": enforcer.breaker.is_open,
                "spool_depth": enforcer.publisher.spool.depth if enforcer.publisher else 0}
        return JSONResponse(body, status_code=200 if ok else 503)
    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    body, ctype = metrics.render()
    return Response(body, media_type=ctype)
