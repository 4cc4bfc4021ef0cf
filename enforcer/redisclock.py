"""Redis's clock as seen from this process: the deadline check.lua compares with Redis TIME.

The offset between our monotonic clock and Redis TIME is sampled with TIME round trips (each
sample is right to within half its round trip); the best recent sample is used, and a deadline
is moved earlier by that error plus a margin, so clock skew between hosts never makes a script
act after the enforcer gave up on it. Until a first sample (Redis unreachable at start), this
host's wall clock stands in, taken as exact (it is the same clock when Redis runs on this host);
sampling is retried every 0.1 s until one succeeds. Known limit: after a failover to a host whose
clock differs, the old host's samples are trusted until newer ones are tighter (at most a minute).
"""
from __future__ import annotations

import asyncio
import time

from enforcer.rediswire import RedisWire

MARGIN_MS = 2.0  # beyond the measured error: a script refuses this much before our give-up
KEEP = 12  # samples remembered (one per `every` seconds: a minute at the default)
DRIFT = 1e-4  # clocks drift apart by up to this much (100 ppm): an older sample is less sure


class RedisClock:
    def __init__(self, wire: RedisWire, every: float = 5.0):
        self.wire = wire
        self.every = every
        self._samples: list[tuple[float, float, float]] = []  # (error ms, offset ms, taken at), newest last
        # Redis ms = perf_counter ms + offset; until sampled: this host's wall clock
        self.offset_ms = (time.time() - time.perf_counter()) * 1000
        self.error_ms = 0.0

    def deadline_ms(self, in_s: float) -> int:
        """`in_s` seconds from now in Redis's clock (ms since epoch), early by the error bound."""
        return int((time.perf_counter() + in_s) * 1000 + self.offset_ms - self.error_ms - MARGIN_MS)

    def seconds_until(self, redis_ms: float) -> float:
        """How long until Redis's clock is surely past `redis_ms` (late by the error bound)."""
        now_redis = time.perf_counter() * 1000 + self.offset_ms
        return max(0.0, (redis_ms - now_redis + self.error_ms + MARGIN_MS) / 1000)

    async def sample(self) -> bool:
        t0 = time.perf_counter()
        reply = await self.wire.call(("TIME",), 0.25)
        t1 = time.perf_counter()
        if not isinstance(reply, list) or len(reply) != 2:
            return False
        redis_ms = int(reply[0]) * 1000 + int(reply[1]) / 1000
        self._samples.append(((t1 - t0) * 500, redis_ms - (t0 + t1) * 500, t1))
        del self._samples[:-KEEP]
        # the surest: the tightest round trip, counting the drift since it was taken
        self.error_ms, self.offset_ms = min((err + (t1 - at) * 1000 * DRIFT, off) for err, off, at in self._samples)
        return True

    async def run(self) -> None:
        """Background task: a few samples at start (the tightest wins), then one every `every` s."""
        while not await self.sample():
            await asyncio.sleep(0.1)
        for _ in range(4):
            await self.sample()
        while True:
            await asyncio.sleep(self.every)
            await self.sample()
