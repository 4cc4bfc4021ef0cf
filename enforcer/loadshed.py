"""Beyond saturation: answer /v1/check 503 at once instead of queueing without bound.

A single event loop that is offered more checks than it can serve builds a standing queue: every
request waits longer, the gateways' own timeouts (Kong and nginx 50 ms) pass, and the enforcer
keeps working on requests nobody waits for. The queue shows as event-loop lag (how late a timer
fires). One late sample is a stall (a collection, the OS running something else) that is over by
the time we see it; samples late in a row, for at least `window`, are a standing queue (as CoDel
judges one). While it lasts, checks are answered 503 `overloaded` before any parsing or Redis
call; the first sample on time ends it. A 5xx is what every gateway integration already treats
as "the enforcer failed", so they fail open (Kong with fault_tolerant, nginx auth_request,
Lambda@Edge, APIM), and a load balancer sees the overload.
Usage reports are never shed (a 202 there is a promise about money).
"""
from __future__ import annotations

import asyncio
import time

import orjson

from enforcer import metrics
from enforcer.responses import send_json

_BODY = orjson.dumps({"error": "overloaded", "message": "the enforcer is saturated; fail open"})
_HEADERS = ((b"x-tollgate-reason", b"overloaded"),)


class LoadShedder:
    def __init__(self, threshold: float, window: float = 0.05, interval: float = 0.005):
        self.threshold = threshold  # seconds of lag; 0: never shed
        self.window = window
        self.interval = interval
        self.overloaded = False
        self._behind_since: float | None = None  # when the current run of late samples began
        self._late = 0  # samples late in a row

    async def run(self) -> None:
        """Background task: sample the lag every `interval`."""
        if self.threshold <= 0:
            return
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            lag = now - due
            metrics.EVENT_LOOP_LAG.set(max(lag, 0.0))
            if lag > self.threshold:
                if self._behind_since is None:
                    self._behind_since = due  # the loop was busy from about then
                self._late += 1
                self.overloaded = self._late >= 2 and now - self._behind_since >= self.window
            else:
                self._behind_since, self._late, self.overloaded = None, 0, False

    async def shed(self, send) -> None:
        metrics.SHED.inc()
        await send_json(send, 503, _BODY, _HEADERS)
