"""The enforcer application: `create_app(settings)` wires the parts, the lifespan runs the tasks."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import lua
from enforcer import metrics
from enforcer.checks import CheckEndpoint
from enforcer.clusterwire import ClusterWire
from enforcer.config import EnforcerConfig
from enforcer.events import Clock, EventQueue, Ids
from enforcer.failopen import Breaker, Guard
from enforcer.health import healthz, metrics_endpoint, readyz
from enforcer.keycache import KeyCache
from enforcer.loadshed import LoadShedder
from enforcer.openapi import SPEC
from enforcer.orphans import Undo
from enforcer.redisclock import RedisClock
from enforcer.rediswire import RedisWire
from enforcer.usage import UsageEndpoint
from tollgate import tracing
from tollgate.bus import make_bus
from tollgate.bus.spool import Spool, SpooledPublisher
from tollgate.config import Settings
from tollgate.gc_tuning import freeze_startup_heap
from tollgate.openapi import openapi_route
from tollgate.redis_client import cluster_mode

log = logging.getLogger("tollgate.enforcer")


class Enforcer:
    """Everything the endpoints share, for one process."""

    def __init__(self, settings: Settings, config: EnforcerConfig):
        self.settings, self.config = settings, config
        self.script = lua.load("check")
        wire_class = ClusterWire if cluster_mode() else RedisWire  # TOLLGATE_REDIS_CLUSTER=1
        self.wire = wire_class(settings.redis_url, connect_timeout=config.redis_connect_timeout_s,
                               hang_timeout=config.redis_hang_timeout_s, prelude=(("SCRIPT", "LOAD", self.script.source),),
                               max_wait=config.check_max_wait_ms / 1000)
        # how long a check waits for Redis at most (the wire's cap): check.lua must not act after it
        self.give_up_s = max(config.check_max_wait_ms, settings.check_deadline_ms) / 1000
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.guard = Guard(self.wire, self.breaker, settings.check_deadline_ms / 1000)
        self.redis_clock = RedisClock(self.wire)  # check.lua's deadline, in Redis's clock
        self.undo = Undo(self.wire, self.redis_clock, self.script.sha)  # holds no answer carried are released
        self.shedder = LoadShedder(config.shed_lag_ms / 1000, config.shed_window_ms / 1000)
        self.keys = KeyCache(self.guard, settings.key_cache_ttl_s, config.negative_cache_ttl_s)
        self.idempotency_ttl_ms = settings.idempotency_ttl_s * 1000
        self.ids = Ids()
        self.clock = Clock()
        self.bus = make_bus(settings, stream_maxlen=config.stream_maxlen or None)
        # Opened at start-up, in the serving process (each worker claims its own spool file).
        self.publisher: SpooledPublisher | None = None
        self.events: EventQueue | None = None
        self.event_queue_class = EventQueue  # enforcer.tracing's when tracing is on

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        spool = Spool(self.settings.spool_path)
        self.publisher = SpooledPublisher(self.bus, spool, on_depth=metrics.SPOOL_DEPTH.set)
        metrics.SPOOL_DEPTH.set(spool.depth)
        self.events = self.event_queue_class(self.publisher, linger=self.config.event_linger_ms / 1000)
        await self.bus.start()
        tasks = [asyncio.create_task(t) for t in
                 (self.keys.listen(self.settings.redis_url), self.publisher.run(), self.events.run(),
                  self.shedder.run())]
        await self.wire.call(("PING",), 0.5)  # connect (and load check.lua) before the first request
        tasks.append(asyncio.create_task(self.redis_clock.run()))
        if self.config.gc_tuning:
            freeze_startup_heap()
        log.info("enforcer ready: redis %s, bus %s, spool %s (%d events to publish again)",
                 self.settings.redis_url, self.settings.bus, spool.path, spool.depth)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.events.flush()  # what is still queued goes to the bus or the spool
            # What the bus has not consumed stays in the spool, published again by the next
            # process on this slot (or any that takes it over); a moment for the rater first.
            await self.publisher.finish()
            await self.bus.close()
            spool.close()
            if self.undo.pending:  # holds no answer carried: release them before we go
                await asyncio.wait(self.undo.pending, timeout=1.0)
            self.wire.close()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse({"error": codes.get(exc.status_code, "http_error"), "message": exc.detail},
                        status_code=exc.status_code, headers=exc.headers)


class HotPath:
    """POST /v1/check straight to its raw endpoint; everything else (and lifespan) to Starlette.

    The endpoint answers every error itself, so Starlette's error and exception middleware and its
    router only cost time around it on every check (py-spy at 3,000 checks/s: ~14 % of samples).
    """

    def __init__(self, app: Starlette, check: CheckEndpoint):
        self.app, self.check = app, check
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/check":
            return await self.check(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, config: EnforcerConfig | None = None) -> HotPath:
    enforcer = Enforcer(settings or Settings(), config or EnforcerConfig())
    check, usage = CheckEndpoint(enforcer), UsageEndpoint(enforcer)  # check: POST, and GET (enforcer.forward_auth)
    if tracing.setup("tollgate-enforcer"):  # TOLLGATE_TRACING: spans only where it is on (enforcer.tracing)
        from enforcer.tracing import TracedEndpoint, TracedEventQueue  # noqa: PLC0415

        check, usage = TracedEndpoint(check, "/v1/check"), TracedEndpoint(usage, "/v1/usage")
        enforcer.event_queue_class = TracedEventQueue
    routes = [
        Route("/v1/check", check),  # reached only through HotPath; here for the route list
        Route("/v1/usage", usage),
        Route("/healthz", healthz),
        Route("/readyz", readyz(enforcer)),
        Route("/metrics", metrics_endpoint),
        openapi_route(SPEC),  # last: the checks never try it
    ]
    app = Starlette(routes=routes, lifespan=enforcer.lifespan, exception_handlers={HTTPException: _http_error})
    app.state.enforcer = enforcer
    return HotPath(app, check)
