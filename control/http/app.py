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

import asyncpg
import redis.exceptions
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control import metrics
from control.console import routes as console
from control.errors import ControlError
from control.http import accounts, alerts, credits, hierarchy, lifecycle, margin_guard, read, sessions, simulator
from control.http.messages import ApiError, Handler, error_response, json_response
from tollgate.backends import Backends
from tollgate.config import Settings
from tollgate.config import settings as env_settings
from tollgate.openapi import openapi_route

log = logging.getLogger("tollgate.admin")

DISABLED = "admin API disabled: set TOLLGATE_ADMIN_TOKEN"
NOT_MIGRATED = "the database has no tollgate schema: run `tollgate db migrate`"
# A backend that does not answer is our problem, not the caller's: 503, not 500.
UNAVAILABLE = (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)

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
    *accounts.ROUTES, *lifecycle.ROUTES, *credits.ROUTES, *alerts.ROUTES, *read.ROUTES, *margin_guard.ROUTES,
    *hierarchy.ROUTES, *sessions.ROUTES, *simulator.ROUTES,
]


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

    from control.http.openapi import SPEC  # noqa: PLC0415  (here: it reads the route table)

    app = Starlette(
        routes=[Route(path, _guarded(h, token, backends), methods=[m]) for m, path, h in ROUTES]
        + [openapi_route(SPEC), metrics.route()]  # no token: like openapi.json
        + console.routes(token, backends),  # the web console: its own cookie auth (control.console)
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.backends = backends
    return app
