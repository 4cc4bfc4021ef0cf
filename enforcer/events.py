"""Decision and fail-open events leave the request path: queued in memory, published in batches.

The check answers after its one Redis call; a background task hands the queue to the bus every few
milliseconds (one pipelined XADD or one Kafka batch), and to the spool when the bus is down.
They are best effort (not written ahead like usage): one per check would double the spool's
writes for records that matter less. What a Redis loss takes with them is the audit of holds the
same loss took away; fail-open records are spooled (the bus is down with Redis) and billing comes
from the usage events anyway.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from enforcer import metrics
from tollgate.bus.spool import SpooledPublisher

log = logging.getLogger("tollgate.enforcer.events")


class EventQueue:
    def __init__(self, publisher: SpooledPublisher, linger: float = 0.005, max_batch: int = 2000):
        self.publisher = publisher
        self.linger = linger
        self.max_batch = max_batch
        self._buf: list[dict[str, Any]] = []
        self._wake = asyncio.Event()

    def put(self, event: dict[str, Any]) -> None:
        self._buf.append(event)
        if len(self._buf) == 1:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.linger)  # let a batch gather
            await self.flush()

    async def flush(self) -> None:
        while self._buf:
            batch, self._buf = self._buf[: self.max_batch], self._buf[self.max_batch:]
            try:
                to_bus = await self.publisher.publish(batch, durable=False)
                metrics.EVENTS_PUBLISHED.labels("bus" if to_bus else "spooled").inc(len(batch))
            except Exception:  # the spool itself failed (disk): nothing else can keep them
                log.exception("lost %d events: neither the bus nor the spool took them", len(batch))
                metrics.EVENTS_PUBLISHED.labels("lost").inc(len(batch))


class Ids:
    """Unique ids without a syscall per request: a random per-process prefix and a counter."""

    def __init__(self):
        self.prefix = os.urandom(8).hex()
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:x}"


class Clock:
    """RFC 3339 UTC timestamps with milliseconds; the seconds part is formatted once per second."""

    def __init__(self):
        self._sec = -1
        self._prefix = ""

    def now_iso(self) -> str:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((t - sec) * 1000):03d}Z"
