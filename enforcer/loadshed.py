"""Beyond saturation: answer /v1/check 503 at once instead of queueing without bound.

A single event loop that is offered more checks than it can serve builds a standing queue: every
request waits longer, the gateways' own timeouts (Kong and nginx 50 ms) pass, and the enforcer
keeps working on requests nobody waits for. The queue shows as event-loop lag (how late a timer
fires). A lag spike is normal (a collection, a burst); a lag that stays above `threshold` for a
whole `window` (its minimum over the window, as CoDel judges a queue) is saturation. While it
lasts, checks are answered 503 `overloaded` before any parsing or Redis call: a 5xx is what every
gateway integration already treats as "the enforcer failed", so they fail open (Kong with
fault_tolerant, nginx auth_request, Lambda@Edge, APIM), and a load balancer sees the overload.
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
    def __init__(self, threshold: float, window: float = 0.1, interval: float = 0.005):
        self.threshold = threshold  # seconds of lag; 0: never shed
        self.window = window
        self.interval = interval
        self.overloaded = False
        self._min = float("inf")  # smallest lag seen in the current window
        self._window_end = 0.0

    async def run(self) -> None:
        """Background task: sample the lag every `interval`, judge each window by its minimum."""
        if self.threshold <= 0:
            return
        self._window_end = time.perf_counter() + self.window
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self._min = min(self._min, now - due)
            if now >= self._window_end:
                self.overloaded = self._min > self.threshold
                metrics.EVENT_LOOP_LAG.set(max(self._min, 0.0))
                self._min, self._window_end = float("inf"), now + self.window
            elif self.overloaded and now - due <= self.threshold:
                self.overloaded = False  # the queue has drained: serve again at once

    async def shed(self, send) -> None:
        metrics.SHED.inc()
        await send_json(send, 503, _BODY, _HEADERS)
